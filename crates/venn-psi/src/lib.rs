/*!
venn-psi: the private set intersection engine.

# Brief overview

Two parties each hold a CSV file. The engine reads a party's file, turns the
selected key columns of every row into a canonical key and a 128-bit
[`Item`](core::Item), groups duplicates, agrees options and sizes with the peer
in a handshake, runs a PSI protocol bucket by bucket over a [`Channel`], and
writes each receiving party's rows of the agreed join in the same order at
every receiver.

[`workers`] runs one party as several workers, each pair of workers on
its own share of the key space (a negotiated bucket plan), and merges their
parts into the same output a single worker writes.

The engine knows nothing of nodes, HTTP or databases: it talks to the peer only
through the [`Channel`] trait.
*/

#![deny(unsafe_code)]

pub mod channel;
pub mod core;
mod error;
mod wire;

pub mod rr22;

pub use channel::{Channel, ChannelError, MemoryChannel, memory_pair};
pub use error::PsiError;
pub mod config;
pub mod csv;
pub mod ecdh;
pub mod item;
pub mod memory;
mod output;
pub mod report;
mod session;
mod slices;
mod store;
pub mod workers;

pub use config::{JoinType, Normalize, Protocol, PsiConfig, Receiver, Side, parse_size};
pub use report::Report;
pub use session::{ReadAhead, bench_read, receivers_of, run, run_read_ahead};
