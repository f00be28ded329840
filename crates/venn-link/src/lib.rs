/*!
venn-link: how two parties exchange bytes.

# Brief overview

A [`Link`] is an ordered, reliable, full-duplex stream of *frames* (byte
vectors) between two parties, with byte counters. [`Link::listen`] and
[`Link::connect`] make direct links over TCP, protected by TLS 1.3 and
authenticated by a shared token (see [`auth`]). The blocking API (`send`,
`recv`) is what the PSI engine's CPU-bound threads want; underneath, one
small tokio runtime per link moves bytes in both directions at once, so a
party that is sending a large volume never stops reading the peer's.

Frames on the wire: a 4-byte little-endian length, then the payload; at most
[`MAX_FRAME`] bytes. Back-pressure: the outgoing queue holds
[`QUEUE_DEPTH`] frames; past that `send` blocks until the socket drains.

Links through a node's gateway: [`Link::via_relay`] dials a relay (the local
node's gateway), introduces itself with an opaque hello, waits for the relay to
pair it with the peer's connection, then runs the same handshake end to end.
*/

#![forbid(unsafe_code)]

pub mod auth;
mod link;
mod tls;

pub use link::{Link, LinkError, LinkOptions, MAX_FRAME, QUEUE_DEPTH};
