"""Parquet Modular Encryption (PME) through PyArrow, bound to a twofold key wrapper.

Files use AES_GCM_V1 with an encrypted footer, uniform 256-bit data keys and double wrapping. Key material is
*external* (a small JSON document per file) so master keys can be rotated without re-encrypting data. The key
material never touches a real filesystem here: it lives in an in-memory filesystem, so the same functions work
inside the enclave, which receives file bytes and key-material bytes from the untrusted side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe
from pyarrow import fs

from twofold.crypto.contexts import key_context
from twofold.errors import IntegrityError, TwofoldError

ALGORITHM = "AES_GCM_V1"
DATA_KEY_BITS = 256
_DIR = "/pme"


def key_material_name(file_name: str) -> str:
    """PyArrow's name for a file's external key material."""
    return f"_KEY_MATERIAL_FOR_{file_name}.json"


class _KeyMaterialFS(fs.FileSystemHandler):
    """A flat in-memory filesystem holding key-material documents by name."""

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.files: dict[str, bytes] = dict(files or {})

    def _name(self, path: str) -> str:
        return path.rsplit("/", 1)[-1]

    def get_type_name(self) -> str:
        return "twofold-key-material"

    def equals(self, other: Any) -> bool:
        return other is self

    def get_file_info(self, paths: list[str]) -> list[fs.FileInfo]:
        infos = []
        for path in paths:
            name = self._name(path)
            if path.rstrip("/") == _DIR:
                infos.append(fs.FileInfo(path, fs.FileType.Directory))
            elif name in self.files:
                infos.append(fs.FileInfo(path, fs.FileType.File, size=len(self.files[name])))
            else:
                infos.append(fs.FileInfo(path, fs.FileType.NotFound))
        return infos

    def get_file_info_selector(self, selector: fs.FileSelector) -> list[fs.FileInfo]:
        return [fs.FileInfo(f"{_DIR}/{n}", fs.FileType.File, size=len(b)) for n, b in self.files.items()]

    def create_dir(self, path: str, recursive: bool) -> None:
        return None

    def delete_dir(self, path: str) -> None:
        raise OSError("read-only directory")

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        raise OSError("read-only directory")

    def delete_root_dir_contents(self) -> None:
        raise OSError("read-only directory")

    def delete_file(self, path: str) -> None:
        self.files.pop(self._name(path), None)

    def move(self, src: str, dest: str) -> None:
        self.files[self._name(dest)] = self.files.pop(self._name(src))

    def copy_file(self, src: str, dest: str) -> None:
        self.files[self._name(dest)] = self.files[self._name(src)]

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return pa.BufferReader(self._read(path))

    def open_input_file(self, path: str) -> pa.NativeFile:
        return pa.BufferReader(self._read(path))

    def open_output_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return pa.PythonFile(_Capture(self.files, self._name(path)), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        raise OSError("append is not supported")

    def normalize_path(self, path: str) -> str:
        return path

    def _read(self, path: str) -> bytes:
        try:
            return self.files[self._name(path)]
        except KeyError:
            raise FileNotFoundError(path) from None


class _Capture:
    """A write-only file object that stores its bytes in a dict when closed."""

    def __init__(self, files: dict[str, bytes], name: str) -> None:
        self._files, self._name, self._parts = files, name, []
        self.closed = False

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        if not self.closed:
            self._files[self._name] = b"".join(self._parts)
            self.closed = True


class _WrapperKmsClient(pe.KmsClient):
    def __init__(self, wrap: Callable[[bytes, bytes], str], unwrap: Callable[[str, bytes], bytes]) -> None:
        super().__init__()
        self._wrap, self._unwrap = wrap, unwrap

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        return self._wrap(bytes(key_bytes), _context(master_key_identifier))

    def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
        return self._unwrap(wrapped_key, _context(master_key_identifier))


def _context(master_key_identifier: str) -> bytes:
    return key_context("parquet-kek", master_key_identifier)


class PmeSession:
    """PME for files of one dataset, with keys wrapped and unwrapped by ``wrapper`` (a KeyWrapper)."""

    def __init__(self, wrapper: Any, dataset_id: str) -> None:
        self._wrapper = wrapper
        self._dataset_id = dataset_id
        self._errors: list[BaseException] = []
        self._factory = pe.CryptoFactory(lambda _cfg: _WrapperKmsClient(self._guard_wrap, self._guard_unwrap))
        self._kms = pe.KmsConnectionConfig(kms_instance_id=wrapper.keystore_id)

    # Errors raised inside KMS callbacks cross C++; remember them so the typed error surfaces unchanged.
    def _guard_wrap(self, key: bytes, context: bytes) -> str:
        try:
            return self._wrapper.wrap(key, context)
        except BaseException as exc:
            self._errors.append(exc)
            raise

    def _guard_unwrap(self, wrapped: str, context: bytes) -> bytes:
        try:
            return self._wrapper.unwrap(wrapped, context)
        except BaseException as exc:
            self._errors.append(exc)
            raise

    def _translate(self, exc: BaseException) -> TwofoldError:
        typed = next((e for e in reversed(self._errors) if isinstance(e, TwofoldError)), None)
        self._errors.clear()
        if isinstance(typed, TwofoldError) and not isinstance(typed, IntegrityError):
            return typed
        return IntegrityError()

    def writer(self, sink: Any, file_name: str, schema: pa.Schema) -> tuple[pq.ParquetWriter, dict[str, bytes]]:
        """A ParquetWriter that encrypts into ``sink``; the returned dict receives the key material on close."""
        memfs = _KeyMaterialFS()
        config = pe.EncryptionConfiguration(
            footer_key=self._dataset_id,  # the master key *identifier* names the dataset (policy scope)
            uniform_encryption=True,
            encryption_algorithm=ALGORITHM,
            plaintext_footer=False,
            double_wrapping=True,
            internal_key_material=False,
            data_key_length_bits=DATA_KEY_BITS,
        )
        props = self._factory.file_encryption_properties(
            self._kms, config, f"{_DIR}/{file_name}", fs.PyFileSystem(memfs)
        )
        return pq.ParquetWriter(sink, schema, encryption_properties=props), memfs.files

    def open_file(self, data: bytes | pa.NativeFile, file_name: str, key_material: bytes) -> pq.ParquetFile:
        """Open encrypted Parquet (bytes or a readable file); any authentication failure raises IntegrityError."""
        memfs = _KeyMaterialFS({key_material_name(file_name): key_material})
        try:
            props = self._factory.file_decryption_properties(
                self._kms, pe.DecryptionConfiguration(), f"{_DIR}/{file_name}", fs.PyFileSystem(memfs)
            )
            source = pa.BufferReader(data) if isinstance(data, bytes | bytearray | memoryview) else data
            return pq.ParquetFile(source, decryption_properties=props)
        except (OSError, pa.ArrowException, ValueError, TwofoldError) as exc:
            raise self._translate(exc) from None

    def read_file(self, data: bytes | pa.NativeFile, file_name: str, key_material: bytes,
                  columns: list[str] | None = None) -> pa.Table:
        """Decrypt a whole file to a table (every page's tag is checked)."""
        parquet = self.open_file(data, file_name, key_material)
        try:
            return parquet.read(columns=columns)
        except (OSError, pa.ArrowException, ValueError, TwofoldError) as exc:
            raise self._translate(exc) from None

    def iter_file(self, data: bytes | pa.NativeFile, file_name: str, key_material: bytes, batch_size: int,
                  columns: list[str] | None = None):
        """Decrypt a file batch by batch."""
        parquet = self.open_file(data, file_name, key_material)
        try:
            yield from parquet.iter_batches(batch_size=batch_size, columns=columns)
        except (OSError, pa.ArrowException, ValueError, TwofoldError) as exc:
            raise self._translate(exc) from None

    def rewrap(self, file_name: str, key_material: bytes) -> bytes:
        """Re-wrap a file's key material under the wrapper's active master key; data is not touched."""
        memfs = _KeyMaterialFS({key_material_name(file_name): key_material})
        try:
            self._factory.rotate_master_keys(self._kms, f"{_DIR}/{file_name}", fs.PyFileSystem(memfs), True, 1)
        except (OSError, pa.ArrowException, ValueError, TwofoldError) as exc:
            raise self._translate(exc) from None
        finally:
            self._factory.remove_cache_entries_for_all_tokens()
        return memfs.files[key_material_name(file_name)]
