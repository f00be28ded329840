-- venn node store, schema 4: a route may run through a third domain's gateway (transit, usually
-- the master of a centralized network). Empty = direct. At a node that is neither end of the
-- route, a row whose transit is this node's own domain is the permission to relay it.
ALTER TABLE routes ADD COLUMN transit VARCHAR(63) NOT NULL DEFAULT '';
