"""Schema migrations: MIGRATIONS[n] upgrades a database at version n to n+1.

Append only: a released migration is never edited, a change is a new entry.
"""

MIGRATIONS: list[str] = [
    # 1: images, the names (tags, digests) that point at them, and snapshot leases.
    """
    CREATE TABLE images (
        id TEXT PRIMARY KEY,              -- config digest, sha256:...
        manifest_digest TEXT NOT NULL,
        config TEXT NOT NULL,             -- the image config JSON
        chain_ids TEXT NOT NULL,          -- JSON list, bottom layer first
        blobs TEXT NOT NULL,              -- JSON list of content digests the image keeps
        size INTEGER NOT NULL,
        created_at INTEGER NOT NULL       -- ns since the epoch
    );
    CREATE TABLE image_names (
        name TEXT PRIMARY KEY,            -- repo:tag or repo@digest
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        kind TEXT NOT NULL CHECK (kind IN ('tag', 'digest'))
    );
    CREATE INDEX image_names_by_image ON image_names(image_id);
    -- A lease keeps a snapshot from garbage collection while its owner (a container) uses it.
    CREATE TABLE snapshot_leases (
        owner TEXT NOT NULL,
        chain_id TEXT NOT NULL,
        PRIMARY KEY (owner, chain_id)
    );
    """,
]
