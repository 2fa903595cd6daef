//! File contents of a flattened image, streamed from its layers.
//!
//! [`LayerContent`] re-reads each layer that still supplies a file (once, in layer order),
//! decompressing and parsing it again, and hands every entry that is the final content of a
//! node to the sink. The diff_id is checked again while streaming, so a blob changed since
//! flattening is caught. Inline and host-file contents are streamed as `LocalContent` does.

use std::collections::BTreeMap;
use std::io::{self, Read};

use super::Layer;
use super::decompress::{DecompressError, LayerReader, Limits};
use super::flatten::tar_error;
use super::tar::{Archive, Kind};
use crate::tree::{Content, ContentSource, NodeId, NodeKind, Tree};

#[derive(Debug, thiserror::Error)]
pub enum LayerContentError {
    #[error("file content refers to layer {layer}, but the image has {count} layers")]
    NoSuchLayer { layer: usize, count: usize },
    #[error("layer {layer}: entry {entry} is missing on second read")]
    MissingEntry { layer: String, entry: u64 },
    #[error("layer {layer}: entry {entry} changed on second read")]
    EntryChanged { layer: String, entry: u64 },
    #[error("layer {layer}: bad content stream")]
    Flatten {
        layer: String,
        #[source]
        source: super::flatten::FlattenError,
    },
}

impl From<LayerContentError> for io::Error {
    fn from(e: LayerContentError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Streams file contents out of an image's layers (bottom first, as flattened).
pub struct LayerContent {
    layers: Vec<Layer>,
    limits: Limits,
}

impl LayerContent {
    pub fn new(layers: Vec<Layer>, limits: Limits) -> Self {
        LayerContent { layers, limits }
    }

    fn stream_layer(
        &self,
        index: usize,
        wanted: &BTreeMap<u64, (NodeId, u64)>,
        sink: &mut dyn FnMut(NodeId, &mut dyn Read) -> io::Result<()>,
    ) -> io::Result<()> {
        let layer = &self.layers[index];
        let digest = &layer.digest;
        let decompress = |e: DecompressError| e.into_io();
        let reader = LayerReader::open(layer, &self.limits).map_err(decompress)?;
        let mut archive = Archive::new(reader);
        let mut found = 0usize;
        let last = *wanted.keys().next_back().expect("non-empty");
        let mut count = 0;
        loop {
            let next = archive
                .next_entry()
                .map_err(|e| flatten_io(digest, tar_error(digest, count, e)))?;
            let Some((entry, header)) = next else { break };
            count = entry + 1;
            let Some(&(node, size)) = wanted.get(&entry) else {
                continue;
            };
            if header.kind != Kind::Regular || header.size != size {
                return Err(LayerContentError::EntryChanged {
                    layer: digest.clone(),
                    entry,
                }
                .into());
            }
            let mut data = archive.data();
            sink(node, &mut data).map_err(|e| match DecompressError::from_io(e) {
                Ok(d) => d.into_io(),
                Err(e) => e,
            })?;
            found += 1;
            if entry == last {
                // Later entries cannot matter; `finish` still hashes the rest for the diff_id.
                break;
            }
        }
        if found != wanted.len() {
            let missing = wanted
                .keys()
                .find(|&&e| e >= count)
                .copied()
                .unwrap_or(last);
            return Err(LayerContentError::MissingEntry {
                layer: digest.clone(),
                entry: missing,
            }
            .into());
        }
        archive.into_inner().finish().map_err(decompress)?;
        Ok(())
    }
}

fn flatten_io(digest: &str, e: super::flatten::FlattenError) -> io::Error {
    match e {
        super::flatten::FlattenError::Decompress(d) => d.into_io(),
        e => LayerContentError::Flatten {
            layer: digest.to_string(),
            source: e,
        }
        .into(),
    }
}

impl ContentSource for LayerContent {
    fn stream(
        &mut self,
        tree: &Tree,
        sink: &mut dyn FnMut(NodeId, &mut dyn Read) -> io::Result<()>,
    ) -> io::Result<()> {
        // For each layer: entry number -> (node, size) of the files it still supplies.
        let mut wanted: Vec<BTreeMap<u64, (NodeId, u64)>> =
            vec![BTreeMap::new(); self.layers.len()];
        for (_, id) in tree.walk() {
            let NodeKind::File { size, content } = &tree.nodes[id].kind else {
                continue;
            };
            match content {
                Content::Inline(bytes) => sink(id, &mut &bytes[..])?,
                Content::HostFile(path) => {
                    sink(id, &mut std::fs::File::open(path)?.take(*size))?;
                }
                Content::Spooled { .. } => {
                    return Err(io::Error::other(
                        "spooled content is read from the spool, not the layers",
                    ));
                }
                Content::Layer { layer, entry } => {
                    let slot = wanted
                        .get_mut(*layer)
                        .ok_or(LayerContentError::NoSuchLayer {
                            layer: *layer,
                            count: self.layers.len(),
                        })?;
                    slot.insert(*entry, (id, *size));
                }
            }
        }
        for (index, w) in wanted.iter().enumerate() {
            if !w.is_empty() {
                self.stream_layer(index, w, sink)?;
            }
        }
        Ok(())
    }
}
