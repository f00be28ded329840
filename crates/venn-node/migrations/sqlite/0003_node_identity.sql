-- venn node store, schema 3: the node that owns this database. One row (id = 1), written at the
-- node's first start; a node with another domain or CA refuses to start on this database.
CREATE TABLE node_identity (
    id          INTEGER      NOT NULL PRIMARY KEY,   -- always 1
    domain_id   VARCHAR(63)  NOT NULL,
    ca_sha256   VARCHAR(64)  NOT NULL,
    claimed_at  BIGINT       NOT NULL
);
