//! The Intel MultiProcessor table (spec 1.4) that tells an ACPI-less kernel about the vCPUs,
//! the IO-APIC and how ISA IRQs are wired. Built as bytes by a pure function.

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout;

#[derive(Debug, Error)]
pub enum MpTableError {
    #[error("{0} vCPUs do not fit the MP table (at most {MAX_CPUS})")]
    TooManyCpus(u8),
    #[error("cannot write the MP table")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Most processors the table describes (APIC ids 0..=253; the IO-APIC takes the next id).
pub const MAX_CPUS: u8 = 254;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_FLAG_ENABLED: u8 = 1;
const CPU_FLAG_BSP: u8 = 2;
/// Family 6 signature and "FPU + APIC" feature flags, as a plain modern CPU reports.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INT: u8 = 3;
const ENTRY_LOCAL_INT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, &b| a.wrapping_add(b))
        .wrapping_neg()
}

/// The configuration table (at [`layout::MPTABLE_CONFIG`]) for `cpus` processors.
pub fn config_table(cpus: u8) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let flags = CPU_FLAG_ENABLED | if id == 0 { CPU_FLAG_BSP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    let ioapic_id = cpus;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(layout::IOAPIC_ADDR as u32).to_le_bytes());
    count += 1;
    for pin in 0..layout::IOAPIC_PINS as u8 {
        // ISA IRQ n on IO-APIC pin n, conforming polarity/trigger.
        entries.extend_from_slice(&[ENTRY_IO_INT, INT_TYPE_INT, 0, 0, 0, pin, ioapic_id, pin]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_LOCAL_INT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let len = (44 + entries.len()) as u16;
    let mut t = Vec::with_capacity(len as usize);
    t.extend_from_slice(b"PCMP");
    t.extend_from_slice(&len.to_le_bytes());
    t.push(4); // spec revision 1.4
    t.push(0); // checksum, below
    t.extend_from_slice(b"HYPERPOD");
    t.extend_from_slice(b"MICROVM     ");
    t.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    t.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    t.extend_from_slice(&count.to_le_bytes());
    t.extend_from_slice(&(layout::APIC_ADDR as u32).to_le_bytes());
    t.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    t.extend_from_slice(&entries);
    t[7] = checksum(&t);
    t
}

/// The 16-byte floating pointer (at [`layout::EBDA_START`]) pointing at the table.
pub fn floating_pointer() -> [u8; 16] {
    let mut f = [0u8; 16];
    f[..4].copy_from_slice(b"_MP_");
    f[4..8].copy_from_slice(&(layout::MPTABLE_CONFIG as u32).to_le_bytes());
    f[8] = 1; // length in 16-byte units
    f[9] = 4; // spec revision 1.4
    f[10] = checksum(&f);
    f
}

/// Writes both parts of the MP table into guest memory.
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MpTableError> {
    if cpus > MAX_CPUS {
        return Err(MpTableError::TooManyCpus(cpus));
    }
    mem.write_slice(&config_table(cpus), GuestAddress(layout::MPTABLE_CONFIG))
        .map_err(MpTableError::Write)?;
    mem.write_slice(&floating_pointer(), GuestAddress(layout::EBDA_START))
        .map_err(MpTableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_checksum_to_zero_and_fit() {
        let sum = |b: &[u8]| b.iter().fold(0u8, |a, &x| a.wrapping_add(x));
        assert_eq!(sum(&floating_pointer()), 0);
        for cpus in [1u8, 2, 254] {
            let t = config_table(cpus);
            assert_eq!(sum(&t), 0);
            assert_eq!(u16::from_le_bytes([t[4], t[5]]) as usize, t.len());
            assert_eq!(
                u16::from_le_bytes([t[34], t[35]]),
                u16::from(cpus) + 2 + 24 + 2
            );
            assert!(layout::MPTABLE_CONFIG + t.len() as u64 <= layout::EBDA_START);
        }
        assert_eq!(&config_table(2)[44 + 20..44 + 22], &[ENTRY_PROCESSOR, 1]);
    }
}
