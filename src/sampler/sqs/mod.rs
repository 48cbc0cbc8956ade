//! Amazon SQS (issue 41). So far its request signer (`sigv4.rs`), checked against AWS's own
//! signing test vectors; the queue reads come with the backend.

pub mod sigv4;
