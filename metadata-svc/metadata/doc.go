// Package metadata keeps metadata-svc's records in one bolt database,
// meta.db: the namespaces and, as later services arrive, the images,
// containers, content and snapshot records and leases of each namespace.
//
// # Schema version 1
//
// Bucket names are shown with a trailing slash, keys without. A bucket
// marked "later" is part of the layout but is created by the service that
// first writes to it, not by the migration.
//
//	meta.db
//	├── schema/
//	│   └── version               8-byte big-endian schema version (1)
//	├── namespaces/
//	│   └── <namespace>/          one bucket per namespace
//	│       ├── labels/
//	│       │   └── <key>         label value
//	│       ├── images/           later: one bucket per image name
//	│       │   └── <name>/
//	│       │       └── record    marshalled containerd.services.images.v1.Image
//	│       ├── containers/       later: one bucket per container id
//	│       │   └── <id>/
//	│       │       └── record    marshalled containerd.services.containers.v1.Container
//	│       ├── content/          later
//	│       │   ├── blobs/        later: one bucket per digest
//	│       │   │   └── <digest>/
//	│       │   │       └── record    marshalled containerd.services.content.v1.Info
//	│       │   └── ingests/      later: one bucket per ingest ref
//	│       │       └── <ref>/
//	│       │           ├── expected  digest the first writer expected, or empty
//	│       │           ├── lease     lease the last writer worked under, or empty
//	│       │           └── expire-at RFC 3339 time after which an ingest
//	│       │                         without a lease is aborted
//	│       ├── snapshots/        later
//	│       │   └── <snapshotter>/  one bucket per snapshot key
//	│       └── leases/           later: one bucket per lease id
//	│           └── <id>/
//	│               ├── record    marshalled containerd.services.leases.v1.Lease
//	│               └── resources/
//	│                   ├── content/
//	│                   │   └── <digest>      empty
//	│                   ├── ingests/
//	│                   │   └── <ref>         empty
//	│                   └── snapshots/
//	│                       └── <snapshotter>/
//	│                           └── <key>     empty
//	└── calls/                    outcomes of mutating calls, for replays
//	    ├── by-id/
//	    │   └── <call id>         8-byte unix nanoseconds, 4-byte gRPC
//	    │                         code, then the marshalled result (code 0)
//	    │                         or the error message
//	    └── by-time/
//	        └── <nanos><call id>  empty; orders the records for pruning
//
// A namespace can be deleted only while its images, containers,
// content/blobs and every snapshots/<snapshotter> bucket are empty; its
// labels and leases go with it.
//
// # Garbage collection
//
// [GC] marks from the roots (every image's target, every container's
// snapshot, what unexpired leases hold, unexpired ingests and objects
// labelled containerd.io/gc.root) along the containerd.io/gc.ref.* labels
// of the records it reaches, then removes the blob and ingest records and
// the expired leases it did not reach, in one transaction, and afterwards
// the bytes in the content plugin that no namespace holds.
//
// # Migrations
//
// [Open] reads schema/version (0 when the database is new) and runs every
// migration from there to [SchemaVersion] in the transaction that stores
// the new version, so a crash leaves the database at the old version or at
// the new one. A change to the tree above comes with a migration and a new
// version.
//
// # Replays
//
// The supervisor replays a unary call with the same call id when the plugin
// process died before answering. A mutating store method called with a
// context from [WithCallID] records its outcome in the transaction that
// makes the change; the same id again returns that outcome and changes
// nothing. Records are kept for [DefaultCallTTL].
package metadata
