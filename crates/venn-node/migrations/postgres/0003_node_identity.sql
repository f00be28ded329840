-- venn node store, schema 3: the node that owns this database (one row, id = 1).
-- PostgreSQL: the SQLite schema with BIGINT for every integer and COLLATE "C" on keys, so they
-- compare and sort byte-wise as in SQLite (pagination gives the same pages).
CREATE TABLE node_identity (
    id          BIGINT      NOT NULL PRIMARY KEY,   -- always 1
    domain_id   VARCHAR(63) COLLATE "C"  NOT NULL,
    ca_sha256   VARCHAR(64) COLLATE "C"  NOT NULL,
    claimed_at  BIGINT       NOT NULL
);
