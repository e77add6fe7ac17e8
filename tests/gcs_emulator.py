"""``gcp-storage-emulator`` with the generation preconditions that tensorstore relies on.

    python tests/gcs_emulator.py start --host 127.0.0.1 --port P --in-memory --default-bucket B

takes the same arguments as the ``gcp-storage-emulator`` command and runs the
same server, with three gaps of the emulator (2026.7) against the GCS JSON API
filled, because Orbax's OCDBT checkpoints depend on them:

* object downloads carry ``x-goog-generation`` (tensorstore reads an object's
  generation from that header; without it: "Malformed StorageGeneration");
* ``ifGenerationNotMatch=G`` on a download of an object at generation G answers
  304 Not Modified (tensorstore revalidates its cached manifest that way);
* ``ifGenerationMatch=G`` on an upload or delete is a precondition (0: the
  object must not exist), else 412 (tensorstore's compare-and-swap of the
  OCDBT manifest);
* a suffix range (``Range: bytes=-N``, the last N bytes) is served as such
  (ArrayRecord's GCS reader asks for a file's footer that way; the emulator
  answered with the whole file);
* ``POST .../o/SRC/moveTo/o/DST`` moves an object (gcsfs's rename tries it
  first; the emulator's 501 made gcsfs retry each file for about a second
  before it fell back to copy and delete).

Everything else is the emulator's own code. The server handles one request at
a time, so a precondition check and the write it guards cannot interleave
with another request.
"""
import re
import sys
from http import HTTPStatus

from gcp_storage_emulator import settings
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download, _insert, _delete = objects.download, objects.insert, objects.delete


def _query(request, key):
    values = request.query.get(key)
    return values[0] if values else None


def _generation(storage, bucket, name) -> int:
    """The object's generation; 0 when there is none (GCS's convention for 'absent')."""
    try:
        return int(storage.get_file_obj(bucket, name)["generation"])
    except NotFound:
        return 0


def _precondition_failed(request, response, generation: int) -> bool:
    match = _query(request, "ifGenerationMatch")
    if match is not None and int(match) != generation:
        response.status = HTTPStatus.PRECONDITION_FAILED
        return True
    return False


class _WithRange:
    """``request`` with another Range header."""

    def __init__(self, request, range_header):
        self._request, self._range = request, range_header

    def __getattr__(self, name):
        return getattr(self._request, name)

    def get_header(self, name, default=None):
        return self._range if name.lower() == "range" else self._request.get_header(name, default)


def download(request, response, storage, *args, **kwargs):
    bucket, name = request.params["bucket_name"], request.params["object_id"]
    generation = _generation(storage, bucket, name)
    suffix = re.fullmatch(r"\s*bytes=-(\d+)\s*", request.get_header("range", None) or "")
    if generation and suffix:
        size = len(storage.get_file(bucket, name))
        request = _WithRange(request, f"bytes={max(0, size - int(suffix.group(1)))}-")
    if generation:
        if _precondition_failed(request, response, generation):
            return
        not_match = _query(request, "ifGenerationNotMatch")
        if not_match is not None and int(not_match) == generation:
            response.status = HTTPStatus.NOT_MODIFIED
            return
        response["x-goog-generation"] = str(generation)
    return _download(request, response, storage, *args, **kwargs)


def insert(request, response, storage, *args, **kwargs):
    name = _query(request, "name")  # media uploads (tensorstore's); others name it in the body
    if name is not None and _precondition_failed(
            request, response, _generation(storage, request.params["bucket_name"], name)):
        return
    return _insert(request, response, storage, *args, **kwargs)


def delete(request, response, storage, *args, **kwargs):
    generation = _generation(storage, request.params["bucket_name"], request.params["object_id"])
    if generation and _precondition_failed(request, response, generation):
        return
    return _delete(request, response, storage, *args, **kwargs)


def move_to(request, response, storage, *args, **kwargs):
    bucket, src, dst = (request.params[k] for k in ("bucket_name", "object_id", "dest_object_id"))
    generation = _generation(storage, bucket, src)
    if not generation:
        response.status = HTTPStatus.NOT_FOUND
        return
    if _precondition_failed(request, response, _generation(storage, bucket, dst)):
        return
    moved = objects._copy(request.base_url, storage, bucket, src, bucket, dst)
    storage.delete_file(bucket, src)
    response.json(moved)


# Before the server module builds its routing table from these names.
objects.download, objects.insert, objects.delete = download, insert, delete

from gcp_storage_emulator import server  # noqa: E402
from gcp_storage_emulator.__main__ import main  # noqa: E402

server.HANDLERS = tuple(
    (rf"^{prefix}/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)/moveTo/o/(?P<dest_object_id>.*[^/]+)$",
     {server.POST: move_to}) for prefix in (settings.API_ENDPOINT, "")) + server.HANDLERS

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
