//! RR22 VOLE-based PSI (being written; see issue 3).
