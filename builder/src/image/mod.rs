//! Container images: where they come from (`reference`, `registry` with `auth`, `oci_layout`,
//! `docker_archive`, `cache`; [`resolve_and_fetch`] in `source` is the entry point), how their
//! blobs are checked (`digest`, `manifest`, `config`), and how their layers become one tree
//! (`decompress`, `tar`, `flatten`).
//!
//! The boundary between the two halves is [`Layer`]: a verified compressed blob on disk plus
//! what its descriptor and the config promise about it.

pub mod auth;
pub mod cache;
pub mod config;
pub mod decompress;
pub mod digest;
pub mod docker_archive;
pub mod flatten;
pub mod layer_content;
pub mod manifest;
pub mod oci_layout;
pub mod pod_transfer;
pub mod progress;
pub mod readahead;
pub mod reference;
pub mod registry;
mod registry_http;
pub mod source;
pub mod spool;
pub mod tar;

use std::path::PathBuf;

pub use source::{FetchOptions, FetchedImage, SourceError, resolve_and_fetch};

/// How a layer blob is compressed, from its media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// One layer, ready to be applied: its compressed blob is on disk and its size and sha256
/// were checked against the descriptor. The uncompressed stream is checked against `diff_id`
/// while it is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// The verified blob (in the content-addressed cache, or inside an OCI layout).
    pub blob: PathBuf,
    /// Byte offset of the blob inside `blob` (non-zero for a layer inside a `docker save`
    /// archive read in place), and its length.
    pub offset: u64,
    pub size: u64,
    /// `sha256:<64 hex>` of the compressed blob.
    pub digest: String,
    /// The descriptor's media type, as written.
    pub media_type: String,
    pub compression: Compression,
    /// `sha256:<64 hex>` of the uncompressed tar, from the image config's `rootfs.diff_ids`.
    pub diff_id: String,
}
