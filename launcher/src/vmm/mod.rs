//! The KVM engine. [`build_vm_for_boot`] reads as its steps: open the pod, create guest memory
//! and the VM, load the kernel and initramfs, attach devices, configure vCPUs; [`run::run`] then
//! runs it to its exit code.

pub mod boot;
pub mod cpu;
pub mod cpuid_cache;
pub mod elf;
pub mod exit;
pub mod memory;
pub mod mptable;
pub mod run;
pub mod source;
pub mod term;
pub mod trust;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use thiserror::Error;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

use crate::config::LaunchConfig;
use crate::devices::Devices;
use crate::devices::serial::{ConsoleSerial, ControlSerial, ControlSink, IrqTrigger};
use crate::devices::virtio_blk::{DiskBackend, VirtioBlk, VirtioBlkError};
use crate::devices::virtio_console::{ConsoleSink, VirtioConsole, VirtioConsoleError};
use crate::devices::virtio_net::{NetBackend, VirtioNet, VirtioNetError};
use crate::layout;
use crate::sandbox;
use run::{Event, Marks, Outcome, RunOptions, Runner};
use source::{PodImage, SourceError};

#[derive(Debug, Error)]
pub enum VmmError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Network(#[from] crate::net::NetError),
    #[error("cannot open /dev/kvm")]
    Kvm(#[source] kvm_ioctls::Error),
    #[error("cannot set up the VM ({0})")]
    Vm(&'static str, #[source] kvm_ioctls::Error),
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Cpu(#[from] cpu::CpuError),
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    #[error("disk {0}")]
    Disk(String, #[source] VirtioBlkError),
    #[error("extra disk {0}: size {1} is not a multiple of 512 bytes")]
    DiskSize(String, u64),
    #[error("cannot open disk {0}")]
    DiskOpen(String, #[source] std::io::Error),
    #[error("{0} disks is more than the {max} this VMM wires", max = layout::VIRTIO_IRQS.len())]
    TooManyDisks(usize),
    #[error("{0} vCPUs: must be 1 to {max}", max = mptable::MAX_CPUS)]
    Vcpus(u32),
    #[error("cannot write the overrides archive")]
    Overrides(#[source] pod::cpio::CpioError),
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("stdio console")]
    Stdio(#[source] VirtioConsoleError),
    #[error("network device")]
    Net(#[source] VirtioNetError),
}

/// A virtio block device to attach.
pub struct DiskSpec {
    pub backend: DiskBackend,
    /// Name returned by `VIRTIO_BLK_T_GET_ID`.
    pub id: String,
}

/// Everything needed to build a VM, independent of where it came from (a pod, or a test).
pub struct BootInputs<'a> {
    pub kernel: &'a [u8],
    /// Initramfs archives, concatenated in order (4-byte aligned).
    pub initramfs: Vec<&'a [u8]>,
    /// Command line before the devices' entries.
    pub cmdline: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    /// Rootfs first, then extra disks.
    pub disks: Vec<DiskSpec>,
    /// Where the serial console's (`ttyS0`) output goes.
    pub console: Box<dyn Write + Send>,
    /// Where the stdio console's (virtio-console, `hvc0`) output goes.
    pub stdio: ConsoleSink,
    /// The network backend (a stream connected to passt): with it the VM gets a virtio-net
    /// device (`eth0`); `None`: no network device at all.
    pub net: Option<NetBackend>,
    /// Enter an ELF kernel with a PVH note via PVH (true everywhere but tests of the 64-bit
    /// entry).
    pub use_pvh: bool,
    /// Where `kernel` and the first initramfs archive are in a file, when they are (a pod): their
    /// whole pages are then mapped from it copy-on-write instead of copied.
    pub backing: Option<FileBacking<'a>>,
    /// Whether `kernel` ticks at [`pod::protocol::GUEST_KERNEL_HZ`] (built from these tools'
    /// fragments): with several vCPUs the command line then gets `lpj=` for the guest's TSC
    /// rate, so that secondary vCPUs do not calibrate their delay loops.
    pub kernel_hz_known: bool,
}

/// The file holding the kernel and the first initramfs archive, and where.
#[derive(Clone, Copy, Debug)]
pub struct FileBacking<'a> {
    pub file: &'a std::fs::File,
    pub kernel_offset: u64,
    pub initramfs_offset: u64,
}

/// A built VM: KVM handles kept alive for the run.
pub struct Vm {
    _kvm: Kvm,
    _fd: VmFd,
    _mem: GuestMemoryMmap,
    pub runner: Runner,
    /// Where the CPUID table came from, for `--timing`.
    pub cpuid: cpuid_cache::CpuidLookup,
    /// How the pod's kernel/initramfs digests were established (a launch from a pod), for
    /// `--timing`.
    pub digests: Option<source::Trust>,
    /// The launch's network backend (passt), ended when the VM is dropped.
    pub network: Option<crate::net::HostNetwork>,
}

fn register_irq(vm: &VmFd, evt: &EventFd, irq: u32) -> Result<(), VmmError> {
    vm.register_irqfd(evt, irq)
        .map_err(|e| VmmError::Vm("irqfd", e))
}

/// Step 2a: the KVM VM with its irqchip, PIT, private pages and memory slots.
fn create_vm(kvm: &Kvm, mem: &GuestMemoryMmap) -> Result<VmFd, VmmError> {
    let vm = kvm.create_vm().map_err(|e| VmmError::Vm("create", e))?;
    for (slot, region) in mem.iter().enumerate() {
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live anonymous mapping of `memory_size` bytes owned by `mem`,
        // which the returned `Vm` keeps alive for as long as the VM exists.
        unsafe { vm.set_user_memory_region(r) }.map_err(|e| VmmError::Vm("memory slot", e))?;
    }
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP)
        .map_err(|e| VmmError::Vm("identity map", e))?;
    vm.set_tss_address(layout::KVM_TSS as usize)
        .map_err(|e| VmmError::Vm("TSS", e))?;
    vm.create_irq_chip()
        .map_err(|e| VmmError::Vm("irqchip", e))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(|e| VmmError::Vm("PIT", e))?;
    cpu::deny_pmu_msrs(kvm, &vm)?;
    Ok(vm)
}

/// Step 4: the devices; each adds its command-line entry.
fn create_devices(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    disks: Vec<DiskSpec>,
    console_out: Box<dyn Write + Send>,
    stdio_out: ConsoleSink,
    net: Option<NetBackend>,
    events: crate::supervisor::EventSender,
) -> Result<Devices, VmmError> {
    if disks.len() > layout::VIRTIO_IRQS.len() {
        return Err(VmmError::TooManyDisks(disks.len()));
    }
    let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::EventFd);
    let console_evt = evt()?;
    register_irq(vm, &console_evt, layout::SERIAL_CONSOLE_IRQ)?;
    let console: ConsoleSerial = Serial::new(IrqTrigger(console_evt), console_out);
    let control_evt = evt()?;
    register_irq(vm, &control_evt, layout::SERIAL_CONTROL_IRQ)?;
    let sink = ControlSink::new(Box::new(move |(at, line)| {
        let _ = events.send(Event::Line(at, line));
    }));
    let control: ControlSerial = Serial::new(IrqTrigger(control_evt), sink);
    let mut blocks = Vec::new();
    for (i, d) in disks.into_iter().enumerate() {
        let dev = VirtioBlk::new(d.backend, &d.id, mem.clone())
            .map_err(|e| VmmError::Disk(d.id.clone(), e))?;
        register_irq(vm, dev.irq_evt(), layout::VIRTIO_IRQS[i])?;
        blocks.push(dev);
    }
    let stdio = VirtioConsole::new(stdio_out, mem.clone()).map_err(VmmError::Stdio)?;
    register_irq(vm, stdio.irq_evt(), layout::VIRTIO_CONSOLE_IRQ)?;
    let net = match net {
        Some(backend) => {
            let dev = VirtioNet::new(backend, mem.clone()).map_err(VmmError::Net)?;
            register_irq(vm, dev.irq_evt(), layout::VIRTIO_NET_IRQ)?;
            Some(dev)
        }
        None => None,
    };
    Ok(Devices::new(console, control, blocks, stdio, net))
}

/// Builds a VM from `inputs` (steps 2 to 4), recording marks on the way. Reads the CPUID
/// table from KVM (no cache).
pub fn build_vm(inputs: BootInputs<'_>, marks: &mut Marks) -> Result<Vm, VmmError> {
    build_vm_with_cache(inputs, marks, None)
}

/// [`build_vm`], taking the supported-CPUID table from `cpuid_cache` when it has a valid entry
/// for this host.
pub fn build_vm_with_cache(
    inputs: BootInputs<'_>,
    marks: &mut Marks,
    cpuid_cache: Option<&cpuid_cache::CpuidCache>,
) -> Result<Vm, VmmError> {
    if inputs.vcpus == 0 || inputs.vcpus > u32::from(mptable::MAX_CPUS) {
        return Err(VmmError::Vcpus(inputs.vcpus));
    }
    let vcpu_count = inputs.vcpus as u8;

    // 2. Guest memory, the VM, the vCPUs.
    let mem = memory::create_guest_memory(inputs.memory_mib)?;
    let mem_bytes = u64::from(inputs.memory_mib) << 20;
    let kvm = Kvm::new().map_err(VmmError::Kvm)?;
    let vm = create_vm(&kvm, &mem)?;
    let vcpus: Vec<VcpuFd> = (0..vcpu_count)
        .map(|i| {
            vm.create_vcpu(u64::from(i))
                .map_err(|e| VmmError::Vm("vCPU", e))
        })
        .collect::<Result<_, _>>()?;
    marks.vm_created = Some(Instant::now());

    // 3. Kernel, initramfs.
    let window = |offset: fn(&FileBacking<'_>) -> u64| {
        inputs.backing.as_ref().map(|b| boot::FileWindow {
            file: b.file,
            offset: offset(b),
        })
    };
    let kernel = boot::load_kernel(
        &mem,
        inputs.kernel,
        window(|b| b.kernel_offset),
        inputs.use_pvh,
    )?;
    // The window describes the first archive; empty archives are left out, so it applies only
    // when that one is not empty.
    let initramfs_window = window(|b| b.initramfs_offset)
        .filter(|_| inputs.initramfs.first().is_some_and(|p| !p.is_empty()));
    let parts: Vec<&[u8]> = inputs
        .initramfs
        .iter()
        .copied()
        .filter(|p| !p.is_empty())
        .collect();
    let initramfs = if parts.is_empty() {
        None
    } else {
        Some(boot::load_initramfs(
            &mem,
            mem_bytes,
            kernel.end,
            &parts,
            initramfs_window,
        )?)
    };
    marks.kernel_loaded = Some(Instant::now());

    // 4. Devices, then the command line and boot information that name them.
    let (events_tx, events) = crate::supervisor::event_queue();
    let devices = create_devices(
        &vm,
        &mem,
        inputs.disks,
        inputs.console,
        inputs.stdio,
        inputs.net,
        events_tx.clone(),
    )?;
    let mut entries = devices.cmdline_entries();
    if inputs.kernel_hz_known && vcpu_count > 1 {
        // KVM_GET_TSC_KHZ: the guest's TSC rate; a KVM without it leaves the guest to calibrate.
        if let Some(lpj) = vcpus[0].get_tsc_khz().ok().and_then(pod::protocol::lpj_arg) {
            entries.push(lpj);
        }
    }
    let cmdline = boot::build_cmdline(&inputs.cmdline, &entries)?;
    boot::write_boot_info(
        &mem,
        &boot::BootInfo {
            mem_bytes,
            cmdline: &cmdline,
            initramfs,
            kernel: &kernel,
        },
    )?;
    mptable::write(&mem, vcpu_count)?;
    cpu::write_boot_tables(&mem, kernel.mode)?;
    let (cpuid, cpuid_lookup) =
        cpuid_cache::supported_cpuid(cpuid_cache, cpuid_cache::host_key, || {
            cpu::supported_cpuid(&kvm)
        })?;
    let tsc_deadline = cpu::tsc_deadline_supported(&kvm);
    for (i, v) in vcpus.iter().enumerate() {
        let ids = (i as u8, vcpu_count);
        cpu::configure_vcpu(v, &cpuid, ids, tsc_deadline, kernel.mode, kernel.entry)?;
    }
    Ok(Vm {
        _kvm: kvm,
        _fd: vm,
        _mem: mem,
        runner: Runner {
            vcpus,
            devices: Arc::new(Mutex::new(devices)),
            events,
            events_tx,
            crew: None,
            forwarder: None,
            release: None,
        },
        cpuid: cpuid_lookup,
        digests: None,
        network: None,
    })
}

/// Steps 1–4 for a launch: open the pod, start its network (`crate::net`: passt, unless
/// `--network none`) without waiting for it, [`build_vm`] meanwhile with the pod's kernel,
/// initramfs (+ the overrides archive, which carries the guest's addressing), command line,
/// rootfs, `--disk`s and the network device on passt's stream, then wait for passt to be ready
/// (its published ports bound) before the guest first runs.
pub fn build_vm_for_boot(
    cfg: &LaunchConfig,
    marks: &mut Marks,
) -> Result<(Vm, RunOptions), VmmError> {
    // 1. The pod: mapped, kernel/initramfs digests established.
    let cache = trust::default_cache_dir().map(trust::VerifiedCache::new);
    let image = PodImage::open(&cfg.pod, cache.as_ref(), cfg.verify)?;
    marks.pod_opened = Some(Instant::now());
    let m = image.manifest();

    // The network before the guest's overrides: they carry its addressing. passt sets itself
    // up while the VM is built.
    let pending = crate::net::begin(cfg, crate::config::Engine::Kvm, &m.run.exposed_ports)?;
    let net = match &pending {
        Some(p) => Some((
            p.guest.clone(),
            NetBackend {
                link: p.link.device_link().map_err(crate::net::NetError::Socket)?,
                mac: p.mac,
            },
        )),
        None => None,
    };
    // The TAP backend's port forwarder runs on a thread of the run when ports are published.
    let forward = pending
        .as_ref()
        .is_some_and(|p| p.link.is_tap() && !p.published.is_empty());
    let mut built = build_from_image(cfg, &image, net, forward, marks)?;
    let Some(pending) = pending else {
        // The pod's mapping goes on the supervisor thread, once the run starts (run.rs).
        built.0.runner.release = Some(Box::new(image));
        return Ok(built);
    };
    marks.published = pending.published.iter().map(ToString::to_string).collect();
    let network = pending.ready()?;
    marks.network_ready = Some(Instant::now());
    let (mut vm, opts) = match network {
        Some(_) => built,
        // passt failed on a launch that asked for no network: the pod runs without one, as
        // it would had passt not been found (a rare path, so the VM is simply built again).
        None => {
            marks.published.clear();
            drop(built);
            build_from_image(cfg, &image, None, false, marks)?
        }
    };
    let mut network = network;
    // The TAP backend's port forwarder runs on a thread of the run, under its own filter.
    vm.runner.forwarder = network
        .as_mut()
        .and_then(|n| n.take_forwarder())
        .map(|(f, _)| f);
    vm.network = network;
    vm.runner.release = Some(Box::new(image));
    Ok((vm, opts))
}

/// Steps 2–4 from an open pod, with the network device on `net` (the guest's addressing for
/// init, and the device's backend) when given; `forward`: the run will have a port forwarder.
fn build_from_image(
    cfg: &LaunchConfig,
    image: &PodImage,
    net: Option<(pod::spec::NetworkConfig, NetBackend)>,
    forward: bool,
    marks: &mut Marks,
) -> Result<(Vm, RunOptions), VmmError> {
    let m = image.manifest();
    let mut guest_overrides = cfg.overrides.clone();
    let net = net.map(|(guest, backend)| {
        guest_overrides.network = Some(guest);
        backend
    });
    let overrides =
        pod::protocol::overrides_archive(&guest_overrides).map_err(VmmError::Overrides)?;
    let mut initramfs = vec![image.initramfs()];
    if let Some(o) = &overrides {
        initramfs.push(o);
    }
    let mut disks = vec![DiskSpec {
        backend: image.rootfs()?,
        id: "rootfs".into(),
    }];
    for (i, d) in cfg.disks.iter().enumerate() {
        let name = d.path.display().to_string();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!d.read_only)
            .open(&d.path)
            .map_err(|e| VmmError::DiskOpen(name.clone(), e))?;
        let len = file
            .metadata()
            .map_err(|e| VmmError::DiskOpen(name.clone(), e))?
            .len();
        // Named here with its path, as the QEMU engine does (the device would name `diskN`).
        if len % 512 != 0 {
            return Err(VmmError::DiskSize(name, len));
        }
        disks.push(DiskSpec {
            backend: DiskBackend {
                file: Arc::new(file),
                offset: 0,
                len,
                read_only: d.read_only,
            },
            id: format!("disk{}", i + 1),
        });
    }
    let inputs = BootInputs {
        kernel: image.kernel(),
        initramfs,
        cmdline: m.kernel_cmdline.clone(),
        memory_mib: cfg.memory_mib.unwrap_or(m.resources.memory_mib),
        vcpus: cfg.vcpus.unwrap_or(m.resources.vcpus),
        disks,
        console: Box::new(crate::devices::serial::Stderr),
        stdio: {
            // hvc0 carries the app's stdout and stderr as frames; the demultiplexer writes
            // each to the launcher's own (on the vCPU thread that served the kick).
            let mut demux = crate::stdio::OutputDemux::default();
            Box::new(move |b: &[u8]| demux.write(b))
        },
        net,
        use_pvh: true,
        backing: image.backing(),
        kernel_hz_known: m
            .kernel
            .as_ref()
            .is_some_and(|k| k.fragments.as_deref() == Some(pod::FRAGMENTS_KEY)),
    };
    // Seccomp (sandbox.rs): the run's threads start now, each compiling and installing its
    // filter on another core while this thread builds the VM; `run::run` hands them their
    // work. One that cannot start here is started again by `run::run`, which reports why.
    let crew = (1..=u32::from(mptable::MAX_CPUS))
        .contains(&inputs.vcpus)
        .then(|| {
            sandbox::Crew::start(sandbox::Plan {
                vcpus: inputs.vcpus as usize,
                signals: true,
                stdin: cfg.interactive,
                net: inputs.net.is_some(),
                forward,
            })
            .ok()
        })
        .flatten();
    let cpuid_cache = cpuid_cache::CpuidCache::default_dir().map(cpuid_cache::CpuidCache::new);
    let mut vm = build_vm_with_cache(inputs, marks, cpuid_cache.as_ref())?;
    vm.runner.crew = crew;
    vm.digests = Some(image.trust);
    let opts = RunOptions {
        timeout: cfg.timeout,
        grace: cfg.grace,
        // As the crew above was planned.
        forward_signals: true,
        stop_signal: crate::config::stop_signal(&m.run.stop_signal),
        stdin: cfg.interactive,
        tty: cfg.tty,
    };
    Ok((vm, opts))
}

/// A whole launch on the KVM engine: build, run. Returns how it ended and, for `--timing`, the
/// notes on where the digests and the CPUID table came from.
pub fn launch(cfg: &LaunchConfig, marks: &mut Marks) -> (Outcome, String) {
    let mut notes = String::new();
    let outcome = match build_vm_for_boot(cfg, marks) {
        Ok((vm, opts)) => {
            if cfg.timing {
                let digests = vm.digests.map(source::Trust::note).unwrap_or_default();
                notes = format!("{digests}{}", vm.cpuid.note());
            }
            let Vm {
                _kvm,
                _fd,
                _mem,
                runner,
                network,
                ..
            } = vm;
            let outcome = run::run(runner, &opts, marks);
            // passt is killed and reaped before the launcher exits, so that its ports are free
            // for the next launch (through its pidfd: the main thread is under its seccomp
            // filter now). Killed first, reaped after the VM's teardown: its exit overlaps ours.
            if let Some(n) = &network {
                n.stop();
            }
            drop((_mem, _fd, _kvm));
            if let Some(n) = network {
                n.end();
            }
            outcome
        }
        Err(e) => Outcome {
            code: pod::protocol::EXIT_LAUNCHER,
            message: Some(error_chain(&e)),
        },
    };
    (outcome, notes)
}

/// `error: cause: cause` on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let m = c.to_string();
        if !s.ends_with(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = c.source();
    }
    s
}
