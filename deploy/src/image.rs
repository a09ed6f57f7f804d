//! The image pipeline: HTTP(S) fetch with Range resume, streaming checksums, format
//! detection, qcow2 decoding, partition layout, configdrive and sparse-aware writing.
