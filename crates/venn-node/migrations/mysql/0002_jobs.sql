-- venn node store, schema 2: jobs (issue 5).
-- MySQL/MariaDB: the SQLite schema with BIGINT for every integer, MEDIUMTEXT for text (TEXT
-- stops at 64 KiB), and utf8mb4_bin so keys compare byte-wise as in SQLite.

-- One row per job this node takes part in (as initiator or party).
CREATE TABLE jobs (
    job_id          VARCHAR(63)  NOT NULL PRIMARY KEY,
    initiator       VARCHAR(63)  NOT NULL,
    manifest        MEDIUMTEXT         NOT NULL,   -- canonical JSON of the manifest the initiator signed
    manifest_sha256 VARCHAR(64)  NOT NULL,
    phase           VARCHAR(32)  NOT NULL,   -- Kuscia's job states
    reason          MEDIUMTEXT         NOT NULL,
    control         VARCHAR(16)  NOT NULL DEFAULT '',  -- '' | Stop | Cancel (sticky commands)
    created_at      BIGINT       NOT NULL,
    start_time      BIGINT       NOT NULL DEFAULT 0,
    end_time        BIGINT       NOT NULL DEFAULT 0,
    updated_at      BIGINT       NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Each party's approval of a job, with its signature over the manifest.
CREATE TABLE job_approvals (
    job_id       VARCHAR(63)  NOT NULL,
    domain_id    VARCHAR(63)  NOT NULL,
    state        VARCHAR(32)  NOT NULL,     -- JobAccepted | JobRejected | JobAwaitingApproval
    reason       MEDIUMTEXT         NOT NULL,
    signature    MEDIUMTEXT         NOT NULL,     -- the party's signature (initiator: over the manifest)
    signer_cert  MEDIUMTEXT         NOT NULL,     -- PEM of the certificate that verifies it
    updated_at   BIGINT       NOT NULL,
    PRIMARY KEY (job_id, domain_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The state of each party of each task, as reported by that party's node.
CREATE TABLE task_parties (
    job_id          VARCHAR(63)  NOT NULL,
    task_id         VARCHAR(127) NOT NULL,
    domain_id       VARCHAR(63)  NOT NULL,
    phase           VARCHAR(16)  NOT NULL,  -- Pending | Running | Succeeded | Failed
    reason          MEDIUMTEXT         NOT NULL,
    progress        BIGINT       NOT NULL DEFAULT 0,   -- per mille
    step            VARCHAR(64)  NOT NULL DEFAULT '',  -- what the task is doing
    report          MEDIUMTEXT         NOT NULL,             -- JSON, from the task
    attempt         BIGINT       NOT NULL DEFAULT 0,
    pid             BIGINT       NOT NULL DEFAULT 0,   -- own parties only
    secret_sha256   VARCHAR(64)  NOT NULL DEFAULT '',  -- own parties only: task → gateway secret
    start_time      BIGINT       NOT NULL DEFAULT 0,
    end_time        BIGINT       NOT NULL DEFAULT 0,
    updated_at      BIGINT       NOT NULL,
    PRIMARY KEY (job_id, task_id, domain_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Every signed control message sent or received (9n-mpc's job stub keeps them all).
CREATE TABLE job_messages (
    id           BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    job_id       VARCHAR(63)  NOT NULL,
    from_domain  VARCHAR(63)  NOT NULL,
    to_domain    VARCHAR(63)  NOT NULL,
    kind         VARCHAR(32)  NOT NULL,
    body         MEDIUMTEXT         NOT NULL,     -- canonical signed bytes (after the tag), JSON
    signature    MEDIUMTEXT         NOT NULL,
    delivered    BIGINT      NOT NULL DEFAULT 0,
    attempts     BIGINT       NOT NULL DEFAULT 0,
    last_error   MEDIUMTEXT         NOT NULL,
    created_at   BIGINT       NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX job_messages_job ON job_messages (job_id);
CREATE INDEX job_messages_undelivered ON job_messages (delivered, to_domain);
