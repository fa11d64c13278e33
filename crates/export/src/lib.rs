//! Exports of a [`block::BlockDevice`] to the host: an NBD server and a FUSE directory.
