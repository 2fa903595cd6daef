//! vCPU state at the first instruction: CPUID, MSRs, FPU, LAPIC, registers for the PVH
//! (32-bit protected mode) or 64-bit Linux entry.

use kvm_bindings::{
    CpuId, Msrs, kvm_cpuid_entry2, kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment,
    kvm_sregs,
};
use kvm_ioctls::{Kvm, VcpuFd};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout;

#[derive(Debug, Error)]
pub enum CpuError {
    #[error("cannot read the CPUID KVM supports")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    #[error("cannot set CPUID")]
    SetCpuid(#[source] kvm_ioctls::Error),
    #[error("cannot set MSRs")]
    SetMsrs(#[source] kvm_ioctls::Error),
    #[error("cannot set the MSR filter")]
    MsrFilter(#[source] kvm_ioctls::Error),
    #[error("KVM refused MSR {0:#x}")]
    MsrRefused(u32),
    #[error("cannot set the FPU state")]
    Fpu(#[source] kvm_ioctls::Error),
    #[error("cannot get/set the local APIC")]
    Lapic(#[source] kvm_ioctls::Error),
    #[error("cannot set registers")]
    Regs(#[source] kvm_ioctls::Error),
    #[error("cannot write the boot GDT/page tables")]
    Memory(#[source] vm_memory::GuestMemoryError),
    #[error("bad CPUID table")]
    CpuidTable,
}

/// How the kernel is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// PVH: 32-bit protected mode, paging off, `ebx` = start_info.
    Pvh,
    /// Linux 64-bit boot protocol: long mode, identity-mapped, `rsi` = boot_params.
    Linux64,
}

const CPUID_HYPERVISOR: u32 = 1 << 31;
const CPUID_HTT: u32 = 1 << 28;
/// Leaf 1 ECX bit 24: the local APIC timer has TSC-deadline mode. `KVM_GET_SUPPORTED_CPUID`
/// leaves it out (KVM reports it as `KVM_CAP_TSC_DEADLINE_TIMER`; QEMU, Firecracker and Cloud
/// Hypervisor set it themselves). Without it Linux calibrates the LAPIC timer against the PIT at
/// boot: `calibrate_APIC_clock` polls for 100 ms, then verifies for another 100 ms: 216 ms of
/// guest time measured under icount (`docs/BENCHMARKS.md`). With it, that function returns at
/// its first line and the timer runs in deadline mode, which KVM emulates (hrtimer or the VMX
/// preemption timer).
const CPUID_TSC_DEADLINE: u32 = 1 << 24;
/// CPUID leaf 0xb/0x1f level types.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Filters KVM's supported CPUID into what vCPU `id` of `count` sees: the hypervisor bit, its
/// APIC id, one package of `count` cores (leaf 1, 4, 0xb, 0x1f), no PMU (leaf 0xa), and the
/// TSC-deadline timer when KVM emulates it (`tsc_deadline`, [`CPUID_TSC_DEADLINE`]).
pub fn filter_cpuid(entries: &mut [kvm_cpuid_entry2], id: u8, count: u8, tsc_deadline: bool) {
    let core_shift = 32 - u32::from(count.max(1) - 1).leading_zeros();
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx =
                    (u32::from(id) << 24) | (u32::from(count) << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx |= CPUID_HYPERVISOR;
                if tsc_deadline {
                    e.ecx |= CPUID_TSC_DEADLINE;
                }
                if count > 1 {
                    e.edx |= CPUID_HTT;
                } else {
                    e.edx &= !CPUID_HTT;
                }
            }
            4 => {
                e.eax = (e.eax & 0x03ff_ffff) | (u32::from(count - 1) << 26);
                // Caches are shared by one thread each, except the last level by the package.
                let level = (e.eax >> 5) & 7;
                let sharing = if level >= 3 { u32::from(count - 1) } else { 0 };
                e.eax = (e.eax & !(0xfff << 14)) | (sharing << 14);
            }
            0xa => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0xb | 0x1f => {
                e.edx = u32::from(id);
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = core_shift;
                        e.ebx = u32::from(count);
                        e.ecx = (LEVEL_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            _ => {}
        }
    }
}

/// Reads KVM's supported CPUID once, for every vCPU to filter.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, CpuError> {
    kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(CpuError::SupportedCpuid)
}

/// AMD's performance-counter MSRs, `(first, count)`: the legacy K7 event selects and counters
/// (`0xc0010000..=0xc0010007`) and the family 15h+ core ones (`0xc0010200..=0xc001020b`).
pub const PMU_MSR_RANGES: [(u32, u32); 2] = [(0xc001_0000, 8), (0xc001_0200, 12)];

/// Denies the guest every MSR of [`PMU_MSR_RANGES`] (a #GP, as on a CPU without them), where KVM
/// can filter MSRs (`KVM_CAP_X86_MSR_FILTER`, Linux 5.10+). The guest gets no PMU (leaf 0xa is
/// cleared for Intel), but on AMD Linux finds the counters without CPUID and probes one at boot
/// (`check_hw_exists` writes PERF_CTR3); a KVM without a vPMU for the VM logs each such write as
/// `Unhandled WRMSR(0xc0010007)`. With the filter the probe faults, and Linux says "PMU not
/// available due to virtualization, using software events only".
///
/// Only on AMD (and Hygon) hosts: an Intel guest finds its PMU through leaf 0xa, which is
/// cleared, and never touches these MSRs; and the ioctl is not free (it waits for an SRCU grace
/// period: 19.7 ms on this project's kvm_pvm host, measured with `strace -T`, 2026-12-03).
pub fn deny_pmu_msrs(kvm: &Kvm, vm: &kvm_ioctls::VmFd) -> Result<(), CpuError> {
    if !host_is_amd() || !kvm.check_extension(kvm_ioctls::Cap::X86MsrFilter) {
        return Ok(());
    }
    // One bit per MSR, all clear: every access in the range is denied.
    let deny = [0u8; 2];
    let ranges = PMU_MSR_RANGES.map(|(base, msr_count)| kvm_ioctls::MsrFilterRange {
        flags: kvm_ioctls::MsrFilterRangeFlags::READ | kvm_ioctls::MsrFilterRangeFlags::WRITE,
        base,
        msr_count,
        bitmap: &deny,
    });
    vm.set_msr_filter(kvm_ioctls::MsrFilterDefaultAction::ALLOW, &ranges)
        .map_err(CpuError::MsrFilter)
}

/// Whether the host CPU is AMD's or Hygon's (CPUID leaf 0's vendor string).
fn host_is_amd() -> bool {
    let r = std::arch::x86_64::__cpuid(0);
    let vendor: Vec<u8> = [r.ebx, r.edx, r.ecx]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    vendor == b"AuthenticAMD" || vendor == b"HygonGenuine"
}

/// MSRs set on every vCPU: (index, value).
pub const BOOT_MSRS: [(u32, u64); 9] = [
    (0x174, 0),       // IA32_SYSENTER_CS
    (0x175, 0),       // IA32_SYSENTER_ESP
    (0x176, 0),       // IA32_SYSENTER_EIP
    (0xc000_0081, 0), // STAR
    (0xc000_0082, 0), // LSTAR
    (0xc000_0083, 0), // CSTAR
    (0xc000_0084, 0), // SYSCALL_MASK
    (0xc000_0102, 0), // KERNEL_GS_BASE
    (0x1a0, 1),       // IA32_MISC_ENABLE: fast strings
];

/// The LAPIC's LVT LINT0 register offset.
const APIC_LVT0: usize = 0x350;
/// The LAPIC's LVT LINT1 register offset.
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(l: &kvm_lapic_state, off: usize) -> u32 {
    let b = |i: usize| l.regs[off + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn set_lapic_reg(l: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().into_iter().enumerate() {
        l.regs[off + i] = b as std::os::raw::c_char;
    }
}

/// LINT0 delivers ExtINT (the PIC), LINT1 delivers NMI.
pub fn wire_lints(l: &mut kvm_lapic_state) {
    let lvt0 = lapic_reg(l, APIC_LVT0);
    set_lapic_reg(l, APIC_LVT0, (lvt0 & !0x700) | (APIC_MODE_EXTINT << 8));
    let lvt1 = lapic_reg(l, APIC_LVT1);
    set_lapic_reg(l, APIC_LVT1, (lvt1 & !0x700) | (APIC_MODE_NMI << 8));
}

/// Selector of the boot code segment: `__BOOT_CS` of the Linux boot protocol, which the 64-bit
/// entry requires (PVH takes any flat segment).
pub const BOOT_CS: u16 = 0x10;
/// Selector of the boot data segment: `__BOOT_DS`.
pub const BOOT_DS: u16 = 0x18;
/// Selector of the boot TSS.
pub const BOOT_TSS: u16 = 0x20;

/// GDT entries, indexed by selector / 8: null, unused, code ([`BOOT_CS`]), data ([`BOOT_DS`]),
/// TSS ([`BOOT_TSS`], 16 bytes in long mode: its upper half, base 63:32, is zero).
pub fn gdt(mode: EntryMode) -> [u64; 6] {
    let code = match mode {
        EntryMode::Pvh => 0x00cf_9b00_0000_ffff,
        EntryMode::Linux64 => 0x00af_9b00_0000_ffff,
    };
    [0, 0, code, 0x00cf_9300_0000_ffff, 0x008f_8b00_0000_ffff, 0]
}

// The GDT fits the room `layout` gives it.
const _: () = assert!(layout::BOOT_GDT + 6 * 8 <= layout::BOOT_IDT);

fn segment(selector: u16, entry: u64) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Special registers for the entry `mode` (segments from [`gdt`]).
pub fn boot_sregs(mut s: kvm_sregs, mode: EntryMode) -> kvm_sregs {
    let g = gdt(mode);
    let code = segment(BOOT_CS, g[usize::from(BOOT_CS / 8)]);
    let data = segment(BOOT_DS, g[usize::from(BOOT_DS / 8)]);
    s.cs = code;
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = segment(BOOT_TSS, g[usize::from(BOOT_TSS / 8)]);
    s.gdt.base = layout::BOOT_GDT;
    s.gdt.limit = (g.len() * 8 - 1) as u16;
    s.idt.base = layout::BOOT_IDT;
    s.idt.limit = 0;
    match mode {
        EntryMode::Pvh => {
            s.cr0 = 0x11; // PE | ET
            s.cr3 = 0;
            s.cr4 = 0;
            s.efer = 0;
        }
        EntryMode::Linux64 => {
            s.cr0 = 0x8000_0011; // PG | ET | PE
            s.cr3 = layout::PML4;
            s.cr4 = 0x20; // PAE
            s.efer = 0x500; // LME | LMA
        }
    }
    s
}

/// General registers: entry point and the boot-info pointer the protocol wants.
pub fn boot_regs(mode: EntryMode, entry: u64) -> kvm_regs {
    let mut r = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Pvh => r.rbx = layout::PVH_START_INFO,
        EntryMode::Linux64 => {
            r.rsp = layout::BOOT_STACK_POINTER;
            r.rbp = layout::BOOT_STACK_POINTER;
            r.rsi = layout::ZERO_PAGE;
        }
    }
    r
}

/// Writes the boot GDT, an empty IDT and (for the 64-bit entry) a 1 GiB identity map.
pub fn write_boot_tables(mem: &GuestMemoryMmap, mode: EntryMode) -> Result<(), CpuError> {
    for (i, e) in gdt(mode).iter().enumerate() {
        mem.write_obj(*e, GuestAddress(layout::BOOT_GDT + 8 * i as u64))
            .map_err(CpuError::Memory)?;
    }
    mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT))
        .map_err(CpuError::Memory)?;
    if mode == EntryMode::Linux64 {
        mem.write_obj(layout::PDPTE | 0x03, GuestAddress(layout::PML4))
            .map_err(CpuError::Memory)?;
        mem.write_obj(layout::PDE | 0x03, GuestAddress(layout::PDPTE))
            .map_err(CpuError::Memory)?;
        for i in 0..512u64 {
            // Present | writable | 2 MiB page.
            mem.write_obj((i << 21) | 0x83, GuestAddress(layout::PDE + i * 8))
                .map_err(CpuError::Memory)?;
        }
    }
    Ok(())
}

/// Whether KVM emulates the LAPIC's TSC-deadline mode (with the in-kernel irqchip every VM of
/// this launcher has), so the guest may be told so ([`CPUID_TSC_DEADLINE`]).
pub fn tsc_deadline_supported(kvm: &Kvm) -> bool {
    kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer)
}

/// Configures vCPU `id` of `count` for `mode` at `entry`; `tsc_deadline` from
/// [`tsc_deadline_supported`].
pub fn configure_vcpu(
    vcpu: &VcpuFd,
    cpuid: &CpuId,
    (id, count): (u8, u8),
    tsc_deadline: bool,
    mode: EntryMode,
    entry: u64,
) -> Result<(), CpuError> {
    let mut cpuid = cpuid.clone();
    filter_cpuid(cpuid.as_mut_slice(), id, count, tsc_deadline);
    vcpu.set_cpuid2(&cpuid).map_err(CpuError::SetCpuid)?;

    let entries: Vec<kvm_msr_entry> = BOOT_MSRS
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| CpuError::CpuidTable)?;
    let n = vcpu.set_msrs(&msrs).map_err(CpuError::SetMsrs)?;
    if n < entries.len() {
        return Err(CpuError::MsrRefused(entries[n].index));
    }

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(CpuError::Fpu)?;

    let mut lapic = vcpu.get_lapic().map_err(CpuError::Lapic)?;
    wire_lints(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(CpuError::Lapic)?;

    // Application processors wait in KVM for INIT/SIPI; only the BSP gets boot registers.
    if id == 0 {
        let sregs = vcpu.get_sregs().map_err(CpuError::Regs)?;
        vcpu.set_sregs(&boot_sregs(sregs, mode))
            .map_err(CpuError::Regs)?;
        vcpu.set_regs(&boot_regs(mode, entry))
            .map_err(CpuError::Regs)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0x1234_5678,
            ..Default::default()
        }
    }

    #[test]
    fn cpuid_shows_hypervisor_apic_id_and_topology() {
        let mut e = vec![
            leaf(1, 0),
            leaf(0xa, 0),
            leaf(0xb, 0),
            leaf(0xb, 1),
            leaf(0xb, 2),
        ];
        filter_cpuid(&mut e, 3, 4, false);
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & CPUID_HYPERVISOR, 0);
        assert_ne!(e[0].edx & CPUID_HTT, 0);
        assert_eq!(e[1].eax, 0);
        assert_eq!((e[2].ebx, e[2].ecx, e[2].edx), (1, 1 << 8, 3));
        assert_eq!((e[3].eax, e[3].ebx, e[3].ecx), (2, 4, (2 << 8) | 1));
        assert_eq!((e[4].ebx, e[4].ecx), (0, 2));
        assert_eq!(e[0].ecx & CPUID_TSC_DEADLINE, 0);
        let mut one = vec![leaf(1, 0), leaf(0xb, 1)];
        filter_cpuid(&mut one, 0, 1, false);
        assert_eq!(one[0].edx & CPUID_HTT, 0);
        assert_eq!(one[1].eax, 0);
    }

    #[test]
    fn tsc_deadline_is_shown_when_kvm_emulates_it() {
        let mut e = vec![leaf(1, 0)];
        e[0].ecx = 0;
        filter_cpuid(&mut e, 0, 1, true);
        assert_eq!(e[0].ecx, CPUID_TSC_DEADLINE | CPUID_HYPERVISOR);
        // Bit 24 of leaf 1 ECX, as the SDM and Linux's X86_FEATURE_TSC_DEADLINE_TIMER (1*32+24).
        assert_eq!(CPUID_TSC_DEADLINE, 0x0100_0000);
    }

    #[test]
    fn lints_are_extint_and_nmi() {
        let mut l = kvm_lapic_state { regs: [0; 1024] };
        set_lapic_reg(&mut l, APIC_LVT0, 0x0001_0700);
        wire_lints(&mut l);
        assert_eq!(lapic_reg(&l, APIC_LVT0), 0x0001_0700);
        assert_eq!(lapic_reg(&l, APIC_LVT1) >> 8 & 7, APIC_MODE_NMI);
    }

    #[test]
    fn entry_registers_follow_the_protocols() {
        let s = boot_sregs(kvm_sregs::default(), EntryMode::Pvh);
        assert_eq!(
            (s.cs.selector, s.cs.db, s.cs.l, s.cr0 & 0x8000_0001),
            (BOOT_CS, 1, 0, 1)
        );
        assert_eq!(
            boot_regs(EntryMode::Pvh, 0x100_0000).rbx,
            layout::PVH_START_INFO
        );
        let s = boot_sregs(kvm_sregs::default(), EntryMode::Linux64);
        assert_eq!((s.cs.l, s.cs.db, s.efer), (1, 0, 0x500));
        // The boot protocol's __BOOT_CS / __BOOT_DS, 4 GiB flat, execute/read and read/write.
        assert_eq!(
            (s.cs.selector, s.ds.selector, s.ss.selector),
            (0x10, 0x18, 0x18)
        );
        assert_eq!(
            (s.cs.type_, s.ds.type_, s.cs.g, s.ds.limit),
            (0xb, 0x3, 1, 0xffff_ffff)
        );
        assert_eq!(s.gdt.limit, 6 * 8 - 1);
        // Written where the registers point, the IDT beside it left empty.
        let mem = crate::vmm::memory::create_guest_memory(16).unwrap();
        write_boot_tables(&mem, EntryMode::Linux64).unwrap();
        for (i, e) in gdt(EntryMode::Linux64).iter().enumerate() {
            let at = GuestAddress(s.gdt.base + 8 * i as u64);
            assert_eq!(mem.read_obj::<u64>(at).unwrap(), *e);
        }
        assert_eq!(mem.read_obj::<u64>(GuestAddress(s.idt.base)).unwrap(), 0);
        assert_eq!(boot_regs(EntryMode::Linux64, 1).rsi, layout::ZERO_PAGE);
        assert_eq!(s.tr.type_, 0xb);
    }
}
