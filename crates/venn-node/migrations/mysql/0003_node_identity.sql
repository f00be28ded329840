-- venn node store, schema 3: the node that owns this database (one row, id = 1).
-- MySQL/MariaDB: the SQLite schema with BIGINT for every integer, MEDIUMTEXT for text (TEXT
-- stops at 64 KiB), and utf8mb4_bin so keys compare byte-wise as in SQLite.
CREATE TABLE node_identity (
    id          BIGINT      NOT NULL PRIMARY KEY,   -- always 1
    domain_id   VARCHAR(63)  NOT NULL,
    ca_sha256   VARCHAR(64)  NOT NULL,
    claimed_at  BIGINT       NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
