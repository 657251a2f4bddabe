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
    # 2: pod sandboxes. The whole PodSandboxConfig is kept as serialized proto bytes, so the
    # labels and annotations list filters need come from it. Columns hold what teardown needs.
    """
    CREATE TABLE sandboxes (
        id TEXT PRIMARY KEY,              -- 64 hex digits
        name TEXT NOT NULL UNIQUE,        -- <name>_<namespace>_<uid>_<attempt>, reserved while the row lives
        pod_name TEXT NOT NULL,
        pod_namespace TEXT NOT NULL,
        pod_uid TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'notready')),
        created_at INTEGER NOT NULL,      -- ns since the epoch
        runtime_handler TEXT NOT NULL,
        config BLOB NOT NULL,             -- runtime.v1.PodSandboxConfig
        netns_path TEXT,                  -- NULL: the host's namespace
        ipc_path TEXT,
        uts_path TEXT,
        shm_path TEXT,                    -- NULL: the host's /dev/shm
        ips TEXT NOT NULL DEFAULT '[]',   -- JSON list, IPv4 first
        cni_result TEXT,                  -- JSON of the pod network's ADD result
        cgroup_parent TEXT NOT NULL,
        log_directory TEXT NOT NULL,
        pause_pid INTEGER                 -- PID 1 of a shared PID namespace, if the pod has one
    );
    """,
    # 3: containers. The whole ContainerConfig is kept as serialized proto bytes.
    """
    CREATE TABLE containers (
        id TEXT PRIMARY KEY,              -- 64 hex digits
        sandbox_id TEXT NOT NULL REFERENCES sandboxes(id),
        name TEXT NOT NULL UNIQUE,        -- <name>_<pod name>_<pod namespace>_<pod uid>_<attempt>
        config BLOB NOT NULL,             -- runtime.v1.ContainerConfig
        image_id TEXT NOT NULL,
        image_ref TEXT NOT NULL,          -- the image as the caller named it
        state TEXT NOT NULL CHECK (state IN ('created', 'running', 'exited')),
        created_at INTEGER NOT NULL,      -- ns since the epoch
        started_at INTEGER NOT NULL DEFAULT 0,
        finished_at INTEGER NOT NULL DEFAULT 0,
        exit_code INTEGER NOT NULL DEFAULT 0,
        reason TEXT NOT NULL DEFAULT '',
        message TEXT NOT NULL DEFAULT '',
        pid INTEGER NOT NULL DEFAULT 0,
        log_path TEXT NOT NULL,
        runtime_handler TEXT NOT NULL,
        cgroups_path TEXT NOT NULL,
        stop_signal INTEGER NOT NULL,
        resources BLOB                    -- runtime.v1.LinuxContainerResources after updates
    );
    CREATE INDEX containers_by_sandbox ON containers(sandbox_id);
    """,
    # 4: intents (what a mutating operation is about to make, written before it acts), facts
    # about the node (the boot id pycri last ran in), the start times that tell a live process
    # from one that reused its PID, and UNKNOWN for a container whose state cannot be read.
    """
    CREATE TABLE intents (
        object_id TEXT PRIMARY KEY,       -- the pod, container, image or layer acted on
        kind TEXT NOT NULL,               -- the operation, e.g. run_pod_sandbox
        plan TEXT NOT NULL,               -- JSON: everything the operation will make
        created_at INTEGER NOT NULL       -- ns since the epoch
    );
    CREATE TABLE node (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    UPDATE sandboxes SET state = 'notready' WHERE state = 'creating';
    ALTER TABLE sandboxes ADD COLUMN pause_start_time INTEGER;
    CREATE TABLE containers_v4 (
        id TEXT PRIMARY KEY,
        sandbox_id TEXT NOT NULL REFERENCES sandboxes(id),
        name TEXT NOT NULL UNIQUE,
        config BLOB NOT NULL,
        image_id TEXT NOT NULL,
        image_ref TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('created', 'running', 'exited', 'unknown')),
        created_at INTEGER NOT NULL,
        started_at INTEGER NOT NULL DEFAULT 0,
        finished_at INTEGER NOT NULL DEFAULT 0,
        exit_code INTEGER NOT NULL DEFAULT 0,
        reason TEXT NOT NULL DEFAULT '',
        message TEXT NOT NULL DEFAULT '',
        pid INTEGER NOT NULL DEFAULT 0,
        log_path TEXT NOT NULL,
        runtime_handler TEXT NOT NULL,
        cgroups_path TEXT NOT NULL,
        stop_signal INTEGER NOT NULL,
        resources BLOB,
        user TEXT NOT NULL DEFAULT '{}',           -- JSON: the process's uid, gid, additional_gids
        pid_start_time INTEGER NOT NULL DEFAULT 0  -- /proc/<pid>/stat starttime of `pid`
    );
    INSERT INTO containers_v4 (id, sandbox_id, name, config, image_id, image_ref, state, created_at, started_at,
        finished_at, exit_code, reason, message, pid, log_path, runtime_handler, cgroups_path, stop_signal, resources)
    SELECT id, sandbox_id, name, config, image_id, image_ref, state, created_at, started_at,
        finished_at, exit_code, reason, message, pid, log_path, runtime_handler, cgroups_path, stop_signal, resources
    FROM containers;
    DROP TABLE containers;
    ALTER TABLE containers_v4 RENAME TO containers;
    CREATE INDEX containers_by_sandbox ON containers(sandbox_id);
    """,
    # 5: the checkpoint archive a container was restored from (empty: created from an image).
    """
    ALTER TABLE containers ADD COLUMN restored_from TEXT NOT NULL DEFAULT ''
    """,
]
