//! Final geometry (group count, inodes per group), bitmaps, inode tables, descriptors and
//! superblocks, once every other block is placed.

use super::Target;
use super::layout::{Alloc, BS, INODE_SIZE, MAX_BPG, gdt_blocks, has_super};
use super::plan::{FIRST_INO, Plan};
use super::superblock::{self, BG_ITABLE_ZEROED, Desc, Super};
use super::{Ext4Error, Ext4Options, Ext4Summary, csum, inode};
use crate::tree::Tree;

const BSU: usize = BS as usize;
/// Free blocks the last group keeps beyond its own metadata, so it is never degenerate.
const LAST_GROUP_SLACK: u64 = 16;

struct Geometry {
    groups: u64,
    ipg: u64,
    blocks: u64,
}

fn itable_blocks(ipg: u64) -> u64 {
    ipg * INODE_SIZE / BS
}

/// Places group metadata for `groups` groups on `alloc`; returns (block bitmaps, inode
/// bitmaps, inode tables).
fn place_group_metadata(
    alloc: &mut Alloc,
    groups: u64,
    ipg: u64,
) -> (Vec<u64>, Vec<u64>, Vec<u64>) {
    let bb = (0..groups).map(|_| alloc.block()).collect();
    let ib = (0..groups).map(|_| alloc.block()).collect();
    let it = (0..groups)
        .map(|_| alloc.contiguous(itable_blocks(ipg)))
        .collect();
    (bb, ib, it)
}

/// Finds the smallest consistent group count: enough groups for the inodes, and enough
/// blocks for data + group metadata + the requested free space.
fn geometry(plan: &Plan, opts: &Ext4Options) -> Result<Geometry, Ext4Error> {
    let inodes = u64::from(plan.last_ino) + u64::from(opts.extra_inodes);
    let extra = opts.extra_bytes.div_ceil(BS);
    let mut probe = plan.alloc.clone();
    let data_end = probe.cursor();
    let bpg = probe.bpg();
    let mut groups = data_end.div_ceil(bpg).max(inodes.div_ceil(MAX_BPG)).max(1);
    for _ in 0..64 {
        let ipg = inodes.div_ceil(groups).div_ceil(16).max(1) * 16;
        let mut sim = plan.alloc.clone();
        place_group_metadata(&mut sim, groups, ipg);
        let mut blocks = (sim.cursor() + extra).max((groups - 1) * bpg + 1);
        let need = blocks.div_ceil(bpg);
        if need > groups {
            groups = need;
            continue;
        }
        let last = groups - 1;
        let reserved = if has_super(last) { sim.area_len() } else { 0 };
        blocks = blocks.max(last * bpg + reserved + LAST_GROUP_SLACK);
        if gdt_blocks(groups) > plan.gdt_reserved {
            return Err(Ext4Error::Layout(
                "descriptor blocks beyond the reserved area",
            ));
        }
        if groups > u64::from(u32::MAX) / bpg {
            return Err(Ext4Error::Layout("too many groups"));
        }
        return Ok(Geometry {
            groups,
            ipg,
            blocks,
        });
    }
    Err(Ext4Error::Layout("group count did not settle"))
}

/// Sets bits `from..to` of `bitmap`.
fn set_bits(bitmap: &mut [u8], from: usize, to: usize) {
    let mut i = from;
    while i < to && i % 8 != 0 {
        bitmap[i / 8] |= 1 << (i % 8);
        i += 1;
    }
    let whole = (to - i) / 8;
    bitmap[i / 8..i / 8 + whole].fill(0xff);
    i += whole * 8;
    while i < to {
        bitmap[i / 8] |= 1 << (i % 8);
        i += 1;
    }
}

fn write(out: Target<'_>, bytes: &[u8], at: u64) -> Result<(), Ext4Error> {
    out.write_all_at(bytes, at).map_err(Ext4Error::Write)
}

/// Writes bitmaps, inode tables, descriptors and superblocks; sizes the file.
pub(crate) fn finish(
    tree: &Tree,
    plan: &Plan,
    out: Target<'_>,
    opts: &Ext4Options,
) -> Result<Ext4Summary, Ext4Error> {
    let geo = geometry(plan, opts)?;
    let (groups, ipg) = (geo.groups, geo.ipg);
    let bpg = plan.alloc.bpg();
    let mut alloc = plan.alloc.clone();
    let (bb, ib, it) = place_group_metadata(&mut alloc, groups, ipg);
    let gdt_used = gdt_blocks(groups);
    let runs = alloc.runs();
    let mut run_i = 0;
    let mut descs = Vec::with_capacity(groups as usize);
    let mut free_blocks_total = 0u64;
    let inodes_total = groups * ipg;
    let last_ino = u64::from(plan.last_ino);
    for g in 0..groups {
        let start = g * bpg;
        let end = ((g + 1) * bpg).min(geo.blocks);
        let mut bitmap = vec![0u8; BSU];
        if has_super(g) {
            set_bits(&mut bitmap, 0, (1 + gdt_used) as usize);
        }
        while run_i < runs.len() && runs[run_i].0 + runs[run_i].1 <= start {
            run_i += 1;
        }
        let mut k = run_i;
        while k < runs.len() && runs[k].0 < end {
            let (s, l) = runs[k];
            let from = s.max(start) - start;
            let to = (s + l).min(end) - start;
            set_bits(&mut bitmap, from as usize, to as usize);
            k += 1;
        }
        // Bits past the group's end (a short last group, or groups under 32768 blocks) are
        // padding and set, as the kernel does.
        set_bits(&mut bitmap, (end - start) as usize, MAX_BPG as usize);
        let used: u64 = bitmap.iter().map(|b| u64::from(b.count_ones())).sum();
        let free_blocks = MAX_BPG - used;
        free_blocks_total += free_blocks;
        write(out, &bitmap, bb[g as usize] * BS)?;
        let block_bitmap_csum = csum::crc(plan.fs_seed, &bitmap[..(bpg / 8) as usize]);

        let first = g * ipg + 1;
        let used_inodes = last_ino.saturating_sub(first - 1).min(ipg);
        let mut ibitmap = vec![0u8; BSU];
        set_bits(&mut ibitmap, 0, used_inodes as usize);
        set_bits(&mut ibitmap, ipg as usize, BSU * 8);
        write(out, &ibitmap, ib[g as usize] * BS)?;
        let inode_bitmap_csum = csum::crc(plan.fs_seed, &ibitmap[..(ipg / 8) as usize]);

        let mut table = vec![0u8; (used_inodes * INODE_SIZE) as usize];
        let mut used_dirs = 0;
        for n in 0..used_inodes {
            let ino = (first + n) as u32;
            let Some(rec) = &plan.recs[ino as usize] else {
                continue;
            };
            if rec.mode & 0o170000 == inode::S_IFDIR {
                used_dirs += 1;
            }
            let meta_node = rec.node.unwrap_or(crate::tree::ROOT);
            let meta = &tree.nodes[meta_node].meta;
            let (uid, gid) = if rec.node.is_some() {
                (meta.uid, meta.gid)
            } else {
                (0, 0)
            };
            let record = inode::Inode {
                mode: rec.mode,
                uid,
                gid,
                size: rec.size,
                links: rec.links,
                fs_blocks: rec.fs_blocks,
                flags: rec.flags,
                i_block: rec.i_block,
                xattr_block: rec.xattr_block,
                mtime: meta.mtime,
                mtime_nsec: meta.mtime_nsec,
                xattrs: &rec.xattrs,
            };
            let bytes = inode::encode(&record, csum::inode_seed(plan.fs_seed, ino, 0));
            let at = (n * INODE_SIZE) as usize;
            table[at..at + INODE_SIZE as usize].copy_from_slice(&bytes);
        }
        write(out, &table, it[g as usize] * BS)?;
        descs.push(Desc {
            block_bitmap: bb[g as usize],
            inode_bitmap: ib[g as usize],
            inode_table: it[g as usize],
            free_blocks: free_blocks as u32,
            free_inodes: (ipg - used_inodes) as u32,
            used_dirs,
            flags: BG_ITABLE_ZEROED,
            itable_unused: (ipg - used_inodes) as u32,
            block_bitmap_csum,
            inode_bitmap_csum,
        });
    }
    let mut gdt = vec![0u8; (gdt_used * BS) as usize];
    for (g, d) in descs.iter().enumerate() {
        gdt[g * 64..g * 64 + 64].copy_from_slice(&superblock::encode_desc(
            d,
            g as u32,
            plan.fs_seed,
        ));
    }
    let mut label = [0u8; 16];
    label[..opts.label.len()].copy_from_slice(opts.label.as_bytes());
    let sb = Super {
        inodes: inodes_total as u32,
        blocks: geo.blocks,
        free_blocks: free_blocks_total,
        free_inodes: (inodes_total - last_ino) as u32,
        blocks_per_group: bpg as u32,
        inodes_per_group: ipg as u32,
        first_ino: FIRST_INO,
        time: plan.time,
        uuid: plan.uuid,
        label,
        hash_seed: plan.hash_seed,
    };
    for g in (0..groups).filter(|&g| has_super(g)) {
        let base = g * bpg * BS;
        let bytes = superblock::encode_super(&sb, g as u16);
        write(out, &bytes, if g == 0 { 1024 } else { base })?;
        write(out, &gdt, base + BS)?;
    }
    out.set_len(geo.blocks * BS).map_err(Ext4Error::Write)?;
    Ok(Ext4Summary {
        size_bytes: geo.blocks * BS,
        blocks: geo.blocks,
        free_blocks: free_blocks_total,
        data_blocks: plan.data_blocks,
        inodes: inodes_total as u32,
        free_inodes: (inodes_total - last_ino) as u32,
        groups: groups as u32,
        uuid: plan.uuid,
    })
}
