//! Every guest-physical address, I/O port and IRQ the KVM engine uses, one per line.
//!
//! Low memory (below 1 MiB) holds the boot structures; the kernel loads at 1 MiB; the
//! initramfs goes at the top of low RAM; the 32-bit hole below 4 GiB holds the virtio-mmio
//! windows and KVM's private pages, and RAM beyond it continues at 4 GiB.

/// GDT used for the first instructions (flat code/data segments, TSS: 6 slots, 48 bytes).
pub const BOOT_GDT: u64 = 0x500;
/// Empty IDT loaded for the first instructions (any exception before the kernel's own IDT is a
/// triple fault).
pub const BOOT_IDT: u64 = 0x540;
/// PVH `hvm_start_info` (56 bytes).
pub const PVH_START_INFO: u64 = 0x6000;
/// PVH module list: one `hvm_modlist_entry` for the initramfs (32 bytes).
pub const PVH_MODLIST: u64 = 0x6040;
/// PVH memory map (`hvm_memmap_table_entry`, 24 bytes each, up to [`MAX_E820_ENTRIES`]).
pub const PVH_MEMMAP: u64 = 0x6080;
/// Linux `boot_params` ("zero page") for the 64-bit entry.
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial stack pointer for the 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page map level 4 of the identity map built for the 64-bit entry.
pub const PML4: u64 = 0x9000;
/// Page directory pointer table of that identity map.
pub const PDPTE: u64 = 0xa000;
/// Page directory of that identity map (512 × 2 MiB pages = the first 1 GiB).
pub const PDE: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE: u64 = 0x20000;
/// Largest command line, including its NUL (the x86 kernel reads at most 2048 by default).
pub const CMDLINE_MAX: usize = 4096;
/// MP configuration table (up to 7 KiB: room for 254 processors); reserved in the e820 map
/// from here to [`LOW_RAM_END`].
pub const MPTABLE_CONFIG: u64 = 0x9e000;
/// Start of the extended BIOS data area, where the kernel finds the MP floating pointer.
pub const EBDA_START: u64 = 0x9fc00;
/// End of conventional memory (start of the legacy VGA/BIOS hole).
pub const LOW_RAM_END: u64 = 0xa0000;
/// Where the kernel is loaded (1 MiB) and where RAM resumes above the legacy hole.
pub const HIMEM_START: u64 = 0x10_0000;
/// Highest address (exclusive) the initramfs may reach (Linux's default `initrd_addr_max` + 1).
pub const INITRAMFS_MAX_END: u64 = 0x8000_0000;
/// Start of the 32-bit MMIO hole: RAM below 4 GiB ends here.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole: RAM beyond [`MMIO_HOLE_START`] continues here.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// First virtio-mmio window; device `i` is at `VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE`.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IO-APIC registers (the kernel's irqchip).
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Local APIC registers.
pub const APIC_ADDR: u64 = 0xfee0_0000;
/// KVM's identity-map page (`KVM_SET_IDENTITY_MAP_ADDR`), one page below the TSS.
pub const KVM_IDENTITY_MAP: u64 = 0xfffb_c000;
/// KVM's three TSS pages (`KVM_SET_TSS_ADDR`).
pub const KVM_TSS: u64 = 0xfffb_d000;
/// Most e820 entries we ever write.
pub const MAX_E820_ENTRIES: usize = 8;

/// Console 16550 UART (`ttyS0`) base port (the guest protocol's).
pub const SERIAL_CONSOLE_PORT: u16 = pod::protocol::CONSOLE_UART.port;
/// Console UART IRQ.
pub const SERIAL_CONSOLE_IRQ: u32 = pod::protocol::CONSOLE_UART.irq as u32;
/// Control-channel 16550 UART (`ttyS1`, see `docs/guest-protocol.md`) base port.
pub const SERIAL_CONTROL_PORT: u16 = pod::protocol::CONTROL_UART.port;
/// Control-channel UART IRQ.
pub const SERIAL_CONTROL_IRQ: u32 = pod::protocol::CONTROL_UART.irq as u32;
/// Number of registers of a 16550 UART.
pub const SERIAL_PORT_COUNT: u16 = 8;
/// i8042 data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// i8042 command/status port (writing 0xfe resets the machine).
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// Exit port: a byte written here ends the VM (the guest protocol's).
pub const EXIT_PORT: u16 = pod::protocol::EXIT_PORT;
/// IRQs of the virtio-mmio devices, in device order (rootfs first, then `--disk`s).
pub const VIRTIO_IRQS: [u32; 12] = [5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17];
/// virtio-mmio window of the stdio console (virtio-console, the guest's `hvc0`): the slot after
/// the last disk's, so disks keep their windows, IRQs and names (`vda` is the rootfs).
pub const VIRTIO_CONSOLE_ADDR: u64 = virtio_mmio_addr(VIRTIO_IRQS.len());
/// IRQ of the stdio console: the first after the disks' (the MP table routes ISA IRQ n to IO-APIC
/// pin n for every pin; 0, 1, 2 and 8 are the PIT, i8042, cascade and RTC).
pub const VIRTIO_CONSOLE_IRQ: u32 = 18;
/// virtio-mmio window of the network device (virtio-net, the guest's `eth0`), when the launch
/// has a network: the slot after the stdio console's.
pub const VIRTIO_NET_ADDR: u64 = virtio_mmio_addr(VIRTIO_IRQS.len() + 1);
/// IRQ of the network device: the first after the stdio console's.
pub const VIRTIO_NET_IRQ: u32 = 19;
/// IO-APIC pins (GSIs) of the in-kernel irqchip.
pub const IOAPIC_PINS: u32 = 24;

/// Address of virtio-mmio window `i`.
pub const fn virtio_mmio_addr(i: usize) -> u64 {
    VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_SIZE
}

// The layout checked at compile time: boot structures do not overlap, the virtio windows (disks,
// then the console, then the network) end below the IO-APIC, and no virtio IRQ collides with another, a UART's or
// a legacy one, or exceeds the IO-APIC's pins.
const _: () = {
    assert!(BOOT_GDT + 48 <= BOOT_IDT && BOOT_IDT + 8 <= PVH_START_INFO);
    assert!(PVH_START_INFO + 56 <= PVH_MODLIST);
    assert!(PVH_MODLIST + 32 <= PVH_MEMMAP);
    assert!(PVH_MEMMAP + 24 * MAX_E820_ENTRIES as u64 <= ZERO_PAGE);
    assert!(ZERO_PAGE + 4096 <= PML4);
    assert!(CMDLINE + CMDLINE_MAX as u64 <= MPTABLE_CONFIG);
    assert!(MPTABLE_CONFIG < EBDA_START && EBDA_START < LOW_RAM_END);
    assert!(virtio_mmio_addr(VIRTIO_IRQS.len()) <= VIRTIO_CONSOLE_ADDR);
    assert!(VIRTIO_CONSOLE_ADDR + VIRTIO_MMIO_SIZE <= VIRTIO_NET_ADDR);
    assert!(VIRTIO_NET_ADDR + VIRTIO_MMIO_SIZE <= IOAPIC_ADDR);
    assert!(VIRTIO_CONSOLE_IRQ < IOAPIC_PINS && VIRTIO_NET_IRQ < IOAPIC_PINS);
    assert!(VIRTIO_CONSOLE_IRQ != SERIAL_CONSOLE_IRQ && VIRTIO_CONSOLE_IRQ != SERIAL_CONTROL_IRQ);
    assert!(VIRTIO_NET_IRQ != SERIAL_CONSOLE_IRQ && VIRTIO_NET_IRQ != SERIAL_CONTROL_IRQ);
    assert!(VIRTIO_NET_IRQ != VIRTIO_CONSOLE_IRQ);
    assert!(!matches!(VIRTIO_CONSOLE_IRQ, 0 | 1 | 2 | 8));
    assert!(!matches!(VIRTIO_NET_IRQ, 0 | 1 | 2 | 8));
    assert!(KVM_IDENTITY_MAP + 0x1000 == KVM_TSS);
    let mut i = 0;
    while i < VIRTIO_IRQS.len() {
        let irq = VIRTIO_IRQS[i];
        assert!(irq < IOAPIC_PINS && irq != SERIAL_CONSOLE_IRQ && irq != SERIAL_CONTROL_IRQ);
        assert!(
            irq != VIRTIO_CONSOLE_IRQ && irq != VIRTIO_NET_IRQ && !matches!(irq, 0 | 1 | 2 | 8)
        );
        i += 1;
    }
};
