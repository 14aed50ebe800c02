"""V8's ``ValueSerializer`` format for the structured-clone subset Node's IPC carries.

Sans-IO and pure Python: :func:`serialize` turns a Python value into the bytes
``v8.serialize()`` (or Node's ``'advanced'`` IPC channel) would produce for the
corresponding JavaScript value, and :func:`deserialize` reads them back. No
framing here: on the IPC channel each payload is preceded by its length as a
4-byte big-endian integer, exactly the framing of :class:`~unix_socketpair.Channel`.

Value mapping (``docs/native-ipc.md`` has the full table):

=================================  ==========================================
Python                             JavaScript
=================================  ==========================================
``None``                           ``null`` (``undefined`` and array holes
                                   also read as ``None``)
``bool``                           ``true`` / ``false``
``int`` in int32                   a number (an ``I`` tag)
``int`` within +-(2**53 - 1)       a number (an ``N`` tag: a double)
any other ``int``                  a ``BigInt``
``float``                          a number (NaN and the infinities included)
``str``                            a string (one-byte if every character is
                                   Latin-1, else two-byte UTF-16)
``dict`` with ``str`` keys only    an object
any other ``dict``                 a ``Map``
``list`` / ``tuple``               a dense array
``set`` / ``frozenset``            a ``Set``
``bytes``-like                     a ``Buffer``
aware ``datetime``                 a ``Date`` (millisecond precision)
=================================  ==========================================

Reading: a JavaScript number that is a whole number within the double-safe range
(and not -0) becomes an ``int``, any other a ``float``, whichever tag carried it
(V8 writes 2**31 or a computed ``2.0`` as a double): the same result
``JSON.parse`` gives in json mode. Object keys are strings (V8 writes index keys
as numbers; they are turned back into their decimal string). Sparse arrays
become lists with ``None`` in the holes; an array's non-index properties are
dropped, as ``JSON.stringify`` drops them. ``Buffer``, ``Uint8Array`` and
``ArrayBuffer`` read as ``bytes``. Shared references and cycles are kept in
both directions (V8's object-reference tag).

Errors: :func:`serialize` raises ``TypeError`` for a value it cannot represent
(and ``ValueError`` for a naive ``datetime``) before returning anything;
:func:`deserialize` raises :class:`~unix_socketpair.ProtocolError`, and nothing
else, for any input it cannot read, naming the tag or the count at fault.

Both functions are thread-safe (no shared state).
"""

from __future__ import annotations

import math
import struct
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from ._errors import ProtocolError

if TYPE_CHECKING:
    from typing_extensions import Buffer
else:
    Buffer = bytes | bytearray | memoryview

__all__ = ["HEADER", "VERSION", "deserialize", "serialize"]

#: The format version Node 20 (V8 11.3) writes, and the newest this module reads.
VERSION = 15
#: Every payload starts with these two bytes: the version tag and the version.
HEADER = bytes((0xFF, VERSION))
_OLDEST_VERSION = 13  # the first version with host objects written as Node writes them

_INT32_MIN = -(1 << 31)
_INT32_MAX = (1 << 31) - 1
_SAFE_MAX = (1 << 53) - 1
# V8 refuses BigInts longer than 2**30 bits (BigInt::kMaxLengthBits).
_BIGINT_MAX_BITS = 1 << 30
# A sparse array becomes a list as long as the array: bound what a small message
# can make us allocate.
_SPARSE_MAX_LENGTH = 1 << 20

# Node's host-object format for ArrayBufferViews (lib/v8.js): the view's type as an
# index into Node's list of view constructors, its byte length, its bytes. On the IPC
# channel (ChildProcessSerializer) a tag comes first: 0 for a view, 1 for another host
# object, which is then written as a plain object.
_IPC_VIEW = 0
_IPC_OTHER = 1
_UINT8ARRAY = 1
_BUFFER = 10
_VIEW_NAMES = (
    "Int8Array",
    "Uint8Array",
    "Uint8ClampedArray",
    "Int16Array",
    "Uint16Array",
    "Int32Array",
    "Uint32Array",
    "Float32Array",
    "Float64Array",
    "DataView",
    "Buffer",
    "BigInt64Array",
    "BigUint64Array",
)

# Tags V8 writes that this subset does not read, named in the error.
_UNSUPPORTED = {
    ord("R"): "RegExp",
    ord("r"): "Error",
    ord("y"): "Boolean object",
    ord("x"): "Boolean object",
    ord("n"): "Number object",
    ord("z"): "BigInt object",
    ord("s"): "String object",
    ord("V"): "ArrayBufferView (not as a host object)",
    ord("~"): "resizable ArrayBuffer",
    ord("t"): "transferred ArrayBuffer",
    ord("u"): "SharedArrayBuffer",
    ord("p"): "shared object",
    ord("w"): "WebAssembly.Module",
    ord("m"): "WebAssembly.Memory",
    ord("M"): "MessagePort",
    ord("-"): "array hole outside an array",
}

_DOUBLE = struct.Struct("<d")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)


# ------------------------------------------------------------------------- serializing


def serialize(value: object, *, node_ipc: bool = True) -> bytes:
    """The V8 serialization of *value*, header included (no length prefix).

    Args:
        value: built from the types in the module's table; containers may share
            members and contain themselves.
        node_ipc: ``True`` (default) for the format of Node's IPC channel
            (``ChildProcessSerializer``: a host object starts with a 0/1 tag);
            ``False`` for that of ``v8.serialize()``. They differ only for bytes.

    Raises:
        TypeError: *value* holds something outside the table (the message names the
            type), or an ``int`` longer than V8's BigInt limit.
        ValueError: a naive ``datetime`` (a ``Date`` is an instant: attach a tzinfo).
        RecursionError: nesting deeper than Python's recursion limit.
    """
    encoder = _Encoder(node_ipc)
    encoder.write(value)
    return bytes(encoder.out)


def _varint(out: bytearray, n: int) -> None:
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _varint_size(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


class _Encoder:
    __slots__ = ("ids", "keep", "node_ipc", "out")

    def __init__(self, node_ipc: bool) -> None:
        self.out = bytearray(HEADER)
        self.node_ipc = node_ipc
        # id() of every object written so far -> its V8 object id (the order in which
        # the reader meets them). *keep* holds them so that no id() is reused meanwhile.
        self.ids: dict[int, int] = {}
        self.keep: list[object] = []

    def write(self, value: object) -> None:
        out = self.out
        if value is None:
            out += b"0"
        elif value is True:
            out += b"T"
        elif value is False:
            out += b"F"
        elif isinstance(value, str):
            self._string(value)
        elif isinstance(value, int):
            self._int(value)
        elif isinstance(value, float):
            out += b"N"
            out += _DOUBLE.pack(value)
        else:
            self._object(value)

    def _string(self, value: str) -> None:
        out = self.out
        try:
            data = value.encode("latin-1")
        except UnicodeEncodeError:
            # Lone surrogates are legal in a JavaScript string: let them through.
            data = value.encode("utf-16-le", "surrogatepass")
            # V8 aligns two-byte characters on an even offset with a padding tag.
            if (len(out) + 1 + _varint_size(len(data))) & 1:
                out.append(0)
            out += b"c"
        else:
            out += b'"'
        _varint(out, len(data))
        out += data

    def _int(self, value: int) -> None:
        out = self.out
        if _INT32_MIN <= value <= _INT32_MAX:
            out += b"I"
            _varint(out, (value << 1) if value >= 0 else ((-value) << 1) - 1)
        elif -_SAFE_MAX <= value <= _SAFE_MAX:
            out += b"N"
            out += _DOUBLE.pack(value)
        else:
            magnitude = -value if value < 0 else value
            if magnitude.bit_length() > _BIGINT_MAX_BITS:
                raise TypeError(
                    f"an int of {magnitude.bit_length()} bits is longer than a V8 BigInt "
                    f"can be ({_BIGINT_MAX_BITS} bits)"
                )
            size = (magnitude.bit_length() + 63) // 64 * 8
            out += b"Z"
            _varint(out, size << 1 | (value < 0))
            out += magnitude.to_bytes(size, "little")

    def _object(self, value: object) -> None:
        out = self.out
        known = self.ids.get(id(value))
        if known is not None:
            out += b"^"
            _varint(out, known)
            return
        if isinstance(value, (bytes, bytearray, memoryview)):
            self._register(value)
            view = memoryview(value)
            data: Buffer = view if view.c_contiguous and view.format == "B" else view.tobytes()
            out += b"\\"
            if self.node_ipc:
                _varint(out, _IPC_VIEW)
            _varint(out, _BUFFER)
            _varint(out, view.nbytes)
            out += data
        elif isinstance(value, dict):
            self._register(value)
            if all(type(key) is str for key in value):
                out += b"o"
                for key, item in value.items():
                    self._string(key)
                    self.write(item)
                out += b"{"
                _varint(out, len(value))
            else:
                out += b";"
                for key, item in value.items():
                    self.write(key)
                    self.write(item)
                out += b":"
                _varint(out, 2 * len(value))
        elif isinstance(value, (list, tuple)):
            self._register(value)
            out += b"A"
            _varint(out, len(value))
            for item in value:
                self.write(item)
            out += b"$\x00"
            _varint(out, len(value))
        elif isinstance(value, (set, frozenset)):
            self._register(value)
            out += b"'"
            for item in value:
                self.write(item)
            out += b","
            _varint(out, len(value))
        elif isinstance(value, datetime):
            if value.tzinfo is None or value.utcoffset() is None:
                raise ValueError(
                    f"a naive datetime ({value!r}) is not an instant: give it a tzinfo "
                    f"to send it as a Date"
                )
            self._register(value)
            # A Date holds whole milliseconds: the one the instant falls in (as its
            # calendar fields show it: 23:59:59.999999 is in 23:59:59.999).
            out += b"D"
            out += _DOUBLE.pack((value - _EPOCH) // _ONE_MS)
        else:
            raise TypeError(
                f"cannot send a {type(value).__name__!r} in V8 format: supported are None, "
                f"bool, int, float, str, dict, list, tuple, set, frozenset, bytes-like "
                f"and aware datetime"
            )

    def _register(self, value: object) -> None:
        self.ids[id(value)] = len(self.keep)
        self.keep.append(value)


# ----------------------------------------------------------------------- deserializing


def deserialize(data: Buffer, *, node_ipc: bool = True) -> Any:
    """The value V8 serialized into *data* (header included, no length prefix).

    Args:
        data: exactly one serialized value; nothing may follow it.
        node_ipc: as for :func:`serialize`.

    Raises:
        ProtocolError: *data* is not one whole value of the supported subset: a bad
            header or version, a truncated value, trailing bytes, an unknown or
            unsupported tag (named), counts that disagree, a ``Map`` key or ``Set``
            member Python cannot hash, nesting deeper than the recursion limit.
    """
    decoder = _Decoder(bytes(data), node_ipc)
    try:
        decoder.header()
        value = decoder.read()
    except RecursionError:
        raise ProtocolError(
            f"a V8 value nested deeper than this decoder can follow "
            f"(at byte {decoder.pos} of {len(decoder.data)})"
        ) from None
    if decoder.pos != len(decoder.data):
        raise ProtocolError(
            f"{len(decoder.data) - decoder.pos} bytes follow the V8 value "
            f"(at byte {decoder.pos} of {len(decoder.data)})"
        )
    return value


def _number(value: float) -> int | float:
    if value.is_integer() and -_SAFE_MAX <= value <= _SAFE_MAX:
        if value == 0 and math.copysign(1.0, value) < 0:
            return value  # -0 has no int
        return int(value)
    return value


class _Decoder:
    __slots__ = ("data", "node_ipc", "objects", "pos")

    def __init__(self, data: bytes, node_ipc: bool) -> None:
        self.data = data
        self.pos = 0
        self.node_ipc = node_ipc
        self.objects: list[object] = []  # by V8 object id

    def fail(self, what: str) -> ProtocolError:
        return ProtocolError(f"{what} (at byte {self.pos} of {len(self.data)} of a V8 value)")

    def header(self) -> None:
        if not self.data or self.data[0] != 0xFF:
            raise self.fail("a V8 value must start with the version tag 0xFF")
        self.pos = 1
        version = self.varint()
        if not _OLDEST_VERSION <= version <= VERSION:
            raise self.fail(
                f"V8 format version {version} is not supported "
                f"(versions {_OLDEST_VERSION} to {VERSION} are)"
            )

    def take(self, size: int) -> bytes:
        start = self.pos
        end = start + size
        if end > len(self.data):
            raise self.fail(f"truncated: {size} bytes needed, {len(self.data) - start} left")
        self.pos = end
        return self.data[start:end]

    def varint(self) -> int:
        data = self.data
        pos = self.pos
        if pos < len(data) and data[pos] < 0x80:  # the common one-byte varint
            self.pos = pos + 1
            return data[pos]
        result = shift = 0
        while True:
            if pos >= len(data):
                self.pos = pos
                raise self.fail("truncated inside a varint")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                self.pos = pos
                return result
            shift += 7
            if shift > 63:
                self.pos = pos
                raise self.fail("a varint longer than 10 bytes")

    def tag(self) -> int:
        """The next tag, padding skipped, without consuming it."""
        data = self.data
        pos = self.pos
        if pos < len(data) and data[pos]:  # no padding: the common case
            return data[pos]
        while pos < len(data) and data[pos] == 0:
            pos += 1
        self.pos = pos
        if pos >= len(data):
            raise self.fail("truncated: a tag was expected")
        return data[pos]

    def length(self, unit: int = 1) -> int:
        """A count of items of at least *unit* bytes each that must fit in what is left."""
        n = self.varint()
        if n * unit > len(self.data) - self.pos:
            raise self.fail(
                f"a count of {n} does not fit in the {len(self.data) - self.pos} bytes left"
            )
        return n

    def new_id(self, value: object) -> int:
        self.objects.append(value)
        return len(self.objects) - 1

    def read(self) -> Any:
        tag = self.tag()
        self.pos += 1
        if tag == 0x22:  # '"' one-byte string
            data, pos = self.data, self.pos
            if pos < len(data) and data[pos] < 0x80:  # a short one, inline
                end = pos + 1 + data[pos]
                if end <= len(data):
                    self.pos = end
                    return data[pos + 1 : end].decode("latin-1")
            return self.take(self.length()).decode("latin-1")
        if tag == 0x49:  # 'I' int32, zigzag
            n = self.varint()
            return (n >> 1) ^ -(n & 1)
        if tag == 0x6F:  # 'o'
            return self.js_object()
        if tag == 0x41:  # 'A'
            return self.dense_array()
        if tag == 0x4E:  # 'N'
            return _number(_DOUBLE.unpack(self.take(8))[0])
        if tag in (0x30, 0x5F):  # '0' null, '_' undefined
            return None
        if tag == 0x54:  # 'T'
            return True
        if tag == 0x46:  # 'F'
            return False
        if tag == 0x63:  # 'c' two-byte string
            size = self.length()
            if size & 1:
                raise self.fail(f"a two-byte string of an odd byte length ({size})")
            return self.take(size).decode("utf-16-le", "surrogatepass")
        if tag == 0x53:  # 'S' UTF-8 string (older writers)
            raw = self.take(self.length())
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise self.fail(f"a UTF-8 string that is not UTF-8 ({exc.reason})") from None
        if tag == 0x5E:  # '^' object reference
            ref = self.varint()
            if ref >= len(self.objects):
                raise self.fail(f"a reference to object {ref}, of {len(self.objects)} read")
            return self.objects[ref]
        if tag == 0x55:  # 'U' uint32
            return self.varint()
        if tag == 0x5A:  # 'Z' BigInt
            bits = self.varint()
            magnitude = int.from_bytes(self.take(bits >> 1), "little")
            return -magnitude if bits & 1 else magnitude
        if tag == 0x61:  # 'a'
            return self.sparse_array()
        if tag == 0x3B:  # ';'
            return self.js_map()
        if tag == 0x27:  # "'"
            return self.js_set()
        if tag == 0x44:  # 'D'
            return self.date()
        if tag == 0x5C:  # '\\' host object
            return self.host_object()
        if tag == 0x42:  # 'B' ArrayBuffer
            slot = self.new_id(None)
            value = self.take(self.length())
            self.objects[slot] = value
            return value
        if tag == 0x3F:  # '?' object count (older writers): informational
            self.varint()
            return self.read()
        name = _UNSUPPORTED.get(tag)
        if name is not None:
            raise self.fail(f"V8 tag {chr(tag)!r} ({name}) is not supported")
        raise self.fail(f"unknown V8 tag 0x{tag:02x} ({chr(tag)!r})")

    def key(self) -> str:
        key = self.read()
        if type(key) is str:
            return key
        if type(key) is int:
            return str(key)
        raise self.fail(f"an object key of type {type(key).__name__}")

    def end(self, expected: int, what: str) -> None:
        """Consume the end tag (already seen by tag()) and check the count after it."""
        self.pos += 1
        count = self.varint()
        if count != expected:
            raise self.fail(f"{what} declares {count} entries, {expected} were read")

    def js_object(self) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        self.new_id(obj)
        count = 0
        while self.tag() != 0x7B:  # '{'
            key = self.key()
            obj[key] = self.read()
            count += 1
        self.end(count, "an object")
        return obj

    def array_properties(self, items: list[Any], end: int) -> int:
        """Read key/value pairs up to the *end* tag into *items*; return how many."""
        count = 0
        while self.tag() != end:
            key = self.read()
            value = self.read()
            count += 1
            if type(key) is int and key >= 0:
                if key >= len(items):
                    raise self.fail(f"array index {key} beyond the length {len(items)}")
                items[key] = value
            elif type(key) is not str:
                raise self.fail(f"an array property key of type {type(key).__name__}")
            # A non-index property has no place in a list: dropped, as JSON drops it.
        self.pos += 1
        return count

    def array_trailer(self, count: int, length: int) -> None:
        properties = self.varint()
        declared = self.varint()
        if properties != count or declared != length:
            raise self.fail(
                f"an array trailer says {properties} properties and length {declared}; "
                f"{count} properties and length {length} were read"
            )

    def dense_array(self) -> list[Any]:
        length = self.length()
        items: list[Any] = [None] * length
        self.new_id(items)
        for i in range(length):
            if self.tag() == 0x2D:  # '-' the hole
                self.pos += 1
            else:
                items[i] = self.read()
        self.array_trailer(self.array_properties(items, 0x24), length)  # '$'
        return items

    def sparse_array(self) -> list[Any]:
        length = self.varint()
        if length > _SPARSE_MAX_LENGTH:
            raise self.fail(
                f"a sparse array of length {length}: longer than the {_SPARSE_MAX_LENGTH} "
                f"this decoder makes into a list"
            )
        items: list[Any] = [None] * length
        self.new_id(items)
        self.array_trailer(self.array_properties(items, 0x40), length)  # '@'
        return items

    def js_map(self) -> dict[Any, Any]:
        mapping: dict[Any, Any] = {}
        self.new_id(mapping)
        count = 0
        while self.tag() != 0x3A:  # ':'
            key = self.read()
            value = self.read()
            count += 2
            try:
                mapping[key] = value
            except TypeError:
                raise self.fail(
                    f"a Map key of type {type(key).__name__} cannot be a dict key"
                ) from None
        self.end(count, "a Map")
        return mapping

    def js_set(self) -> set[Any]:
        members: set[Any] = set()
        self.new_id(members)
        count = 0
        while self.tag() != 0x2C:  # ','
            member = self.read()
            count += 1
            try:
                members.add(member)
            except TypeError:
                raise self.fail(
                    f"a Set member of type {type(member).__name__} cannot be in a set"
                ) from None
        self.end(count, "a Set")
        return members

    def date(self) -> datetime:
        slot = self.new_id(None)
        millis = _DOUBLE.unpack(self.take(8))[0]
        try:
            value = _EPOCH + timedelta(milliseconds=millis)
        except (OverflowError, ValueError):
            raise self.fail(f"a Date of {millis} ms since 1970 has no datetime") from None
        self.objects[slot] = value
        return value

    def host_object(self) -> Any:
        slot = self.new_id(None)
        if self.node_ipc:
            kind = self.varint()
            if kind == _IPC_OTHER:
                value = self.read()
                self.objects[slot] = value
                return value
            if kind != _IPC_VIEW:
                raise self.fail(f"a host object of kind {kind} (0 and 1 exist)")
        index = self.varint()
        if index not in (_BUFFER, _UINT8ARRAY):
            name = _VIEW_NAMES[index] if index < len(_VIEW_NAMES) else f"type {index}"
            raise self.fail(f"a {name} host object is not supported (Buffer and Uint8Array are)")
        value = self.take(self.length())
        self.objects[slot] = value
        return value
