# One pod per allocation on Nomad clients: a prestart task fetches the pod from a registry with
# `hyperbuild pull`, the main task boots it with `hyperlaunch` (whose exit code is the app's).
# Clients need the hyperpod package (and qemu-system-x86 where KVM does not run guests
# natively, see `hyperlaunch doctor`), the raw_exec driver enabled in their configuration:
#   plugin "raw_exec" { config { enabled = true } }
# and the signers' public key at /etc/hyperpod/signing.pub. Run it with
#   nomad job run -var pod_ref=registry.example.com/team/app/pod:1.0 hyperpod.nomad.hcl

variable "pod_ref" {
  type        = string
  description = "Where the pod is (a registry reference, as given to hyperbuild push)"
  default     = "registry.example.com/team/app/pod:1.0"
}

variable "count" {
  type    = number
  default = 2
}

job "hyperpod-app" {
  datacenters = ["*"]
  type        = "service"

  group "app" {
    count = var.count

    constraint {
      attribute = "${attr.kernel.name}"
      value     = "linux"
    }

    # The app's failures restart it in place a few times, then the allocation is rescheduled.
    restart {
      attempts = 3
      interval = "10m"
      delay    = "5s"
      mode     = "fail"
    }

    task "fetch" {
      lifecycle {
        hook    = "prestart"
        sidecar = false
      }
      driver = "raw_exec"
      config {
        command = "/usr/bin/hyperbuild"
        args    = ["pull", "${var.pod_ref}", "-o", "${NOMAD_ALLOC_DIR}/app.pod"]
      }
      resources {
        cpu    = 200
        memory = 128
      }
    }

    task "app" {
      driver = "raw_exec"
      config {
        command = "/usr/bin/hyperlaunch"
        args = [
          "--grace", "10",
          "--require-signature", "/etc/hyperpod/signing.pub",
          "${NOMAD_ALLOC_DIR}/app.pod",
        ]
      }
      # Nomad's stop sends SIGTERM; hyperlaunch forwards the pod's stop signal and ends the VM
      # after --grace (exit 137); kill_timeout leaves it 5 s more.
      kill_signal  = "SIGTERM"
      kill_timeout = "15s"
      env {
        # hyperlaunch's caches (verified digests, engine verdict) stay in the allocation.
        XDG_CACHE_HOME = "${NOMAD_TASK_DIR}/cache"
      }
      resources {
        cpu    = 1000
        # The pod's guest memory (hyperbuild --memory, 128 MiB by default) plus the launcher.
        memory = 192
      }
    }
  }
}
