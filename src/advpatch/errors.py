"""Every error advpatch raises on purpose, in one place, in two branches:

* :class:`InputError` (also a ``ValueError``): bad input, known before or while it is read (a
  parameter, a data source, a model or patch set, an S3 location or its settings). The message
  names the parameter or file, the value and what is allowed; the command line prints it as one
  line and exits 2, a task ends its log with it.
* :class:`ServiceError` (also a ``ConnectionError``): a service failed (MLflow's tracking server,
  the object store, the KFP API, the local MLflow server) after the bounded retries its client
  makes; the message names the service (never a secret) and what failed; exit status 3.

Anything else is a bug and keeps its traceback. :data:`ERROR_PREFIX` starts the one line a task
that failed on either prints last (what KFP's UI and ``advpatch run`` show).

    AdvpatchError
      InputError: ParameterError, SourceError, DatasetError, ModelError, PatchSetError, ArchiveError,
                  CertifiedError, RegistryError, CompareError, StorageInputError,
                  TrackingInputError
      ServiceError: TrackingError, StorageError, KFPError, ServerError
"""

ERROR_PREFIX = "advpatch: error: "
"""How a task's last line starts when it failed on an :class:`AdvpatchError`."""


class AdvpatchError(Exception):
    """An error a user can act on; the message says what and how to fix it."""


class InputError(AdvpatchError, ValueError):
    """Bad input: a value, a file or a setting that cannot be used."""


class ServiceError(AdvpatchError, ConnectionError):
    """A service failed, after the retries its client makes."""


# ---- bad input
class ParameterError(InputError):
    """A parameter value is not allowed. The message names the parameter, the value and what is
    allowed."""


class SourceError(InputError):
    """A data source (or a file a step reads: weights, a class index) is missing, empty or unreadable."""


class DatasetError(InputError):
    """A dataset folder is missing, malformed or does not fit what a step needs."""


class ModelError(InputError):
    """A model artifact or file is missing or malformed, or does not fit the data."""


class PatchSetError(InputError):
    """A patch set is missing or malformed, or does not fit the data."""


class ArchiveError(InputError):
    """An archive is unreadable, holds something unsafe, or not what was asked for."""


class CertifiedError(InputError):
    """Bad certification settings."""


class RegistryError(InputError):
    """A registered model cannot be found or was not logged by advpatch as a ``.keras`` file."""


class CompareError(InputError):
    """The runs to compare cannot be found, or one holds no advpatch results."""


class StorageInputError(InputError):
    """An S3 location, its bucket or objects, or the S3 settings (endpoint, credentials) are wrong."""


class TrackingInputError(InputError):
    """The MLflow tracking URI has no form MLflow takes."""


# ---- a service failed
class TrackingError(ServiceError):
    """The MLflow tracking server cannot be reached, does not answer, or refuses the request."""


class StorageError(ServiceError):
    """The object store failed (unreachable, cut off, failing) after the retries."""


class KFPError(ServiceError):
    """The KFP API could not be reached or refused a request."""


class ServerError(ServiceError):
    """The local MLflow server did not start."""
