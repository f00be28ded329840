//! venn-link (being written).
