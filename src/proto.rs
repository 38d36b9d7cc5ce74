//! The generated wire types of `creditd.v1`.
#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("creditd.v1");
}

/// The encoded descriptors, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("creditd_descriptor");
