"""OpenAI's Files and Batches API, and the supervisor that runs batches as Ray jobs at sites.

- `protocol`: the wire objects, which are also the stored records;
- `files`: input files checked line by line, lines turned into site requests;
- `service`: what the routes call (uploads, create, list, cancel);
- `supervisor`: runs each batch: site, Ray job, results, output files;
- `store`: where files, batches and results are kept.
"""

from serve_app.batch.service import BatchService
from serve_app.batch.store import BatchStore, SqliteBatchStore
from serve_app.batch.supervisor import BatchSupervisor

__all__ = ["BatchService", "BatchStore", "BatchSupervisor", "SqliteBatchStore"]
