// bench/kvm-create.c (run by bench/kvm-create.sh): what each of the KVM engine's VM-creation
// ioctls costs on this host, in the launcher's order, with nothing else running in the process:
// open /dev/kvm, KVM_CREATE_VM, the 128 MiB memory slot, identity map + TSS, the irqchip, the
// PIT, vCPU 0, four irqfds, then the teardown (closing it all). `kvm-create ORDER RUNS`:
// ORDER `m` = the memory slot first (the launcher's order), `i` = irqchip and PIT first.
// Prints p50/min/p90 in microseconds per step.
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

enum { OPEN, CREATE_VM, MEMSLOT, IDMAP_TSS, IRQCHIP, PIT, VCPU, IRQFDS, TEARDOWN, STEPS };
static const char *names[STEPS] = {"open /dev/kvm", "KVM_CREATE_VM", "memory slot", "idmap+TSS",
                                   "irqchip", "PIT", "vCPU", "irqfd x4", "teardown"};

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void check(int r, const char *what) {
  if (r < 0) {
    perror(what);
    exit(1);
  }
}

int main(int argc, char **argv) {
  if (argc != 3 || (argv[1][0] != 'm' && argv[1][0] != 'i') || atoi(argv[2]) < 1) {
    fprintf(stderr, "usage: kvm-create m|i RUNS\n");
    return 2;
  }
  char order = argv[1][0];
  int n = atoi(argv[2]);
  double *t[STEPS];
  for (int i = 0; i < STEPS; i++) t[i] = calloc(n, sizeof(double));
  size_t size = 128 << 20;
  for (int r = 0; r < n; r++) {
    double a = now_us(), b;
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    check(kvm, "/dev/kvm");
    b = now_us(); t[OPEN][r] = b - a; a = b;
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    check(vm, "KVM_CREATE_VM");
    b = now_us(); t[CREATE_VM][r] = b - a;
    void *mem = mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    struct kvm_userspace_memory_region slot = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = size, .userspace_addr = (unsigned long)mem};
    struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};
    unsigned long long idmap = 0xfffbc000;
    if (order == 'm') {
      a = now_us();
      check(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &slot), "memory slot");
      t[MEMSLOT][r] = now_us() - a;
    }
    a = now_us();
    check(ioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, &idmap), "identity map");
    check(ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000), "TSS");
    b = now_us(); t[IDMAP_TSS][r] = b - a; a = b;
    check(ioctl(vm, KVM_CREATE_IRQCHIP, 0), "irqchip");
    b = now_us(); t[IRQCHIP][r] = b - a; a = b;
    check(ioctl(vm, KVM_CREATE_PIT2, &pit), "PIT");
    t[PIT][r] = now_us() - a;
    if (order == 'i') {
      a = now_us();
      check(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &slot), "memory slot");
      t[MEMSLOT][r] = now_us() - a;
    }
    a = now_us();
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    check(vcpu, "vCPU");
    b = now_us(); t[VCPU][r] = b - a; a = b;
    int evt[4];
    for (int i = 0; i < 4; i++) {
      evt[i] = eventfd(0, EFD_NONBLOCK);
      struct kvm_irqfd irqfd = {.fd = evt[i], .gsi = 4 + i};
      check(ioctl(vm, KVM_IRQFD, &irqfd), "irqfd");
    }
    b = now_us(); t[IRQFDS][r] = b - a; a = b;
    for (int i = 0; i < 4; i++) close(evt[i]);
    close(vcpu);
    close(vm);
    close(kvm);
    munmap(mem, size);
    t[TEARDOWN][r] = now_us() - a;
    usleep(20000);
  }
  for (int i = 0; i < STEPS; i++) {
    qsort(t[i], n, sizeof(double), cmp);
    printf("%-14s p50 %8.1f us  min %8.1f  p90 %8.1f\n", names[i], t[i][n / 2], t[i][0], t[i][n * 9 / 10]);
  }
  return 0;
}
