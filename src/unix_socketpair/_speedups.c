/* The framing hot loops in C: the same contract as the pure-Python
 * split_frames() and join_frames() in _framing.py, which documents it and
 * which this module must match on every input, errors included (the test
 * suite compares the two); and take_frame(), recv()'s lockless take of one
 * buffered message (its twin and contract: _codec.py_take_frame).
 *
 * Wire format: a 4-byte unsigned big-endian length, then that many bytes.
 *
 * Not the Limited API: Py_buffer is part of it only from Python 3.11, and the
 * project supports 3.10; the extension is built from source for the
 * interpreter that installs it.
 *
 * Thread-safety: both functions hold the GIL from start to end. Python code
 * can run inside them only where the comments say (an __index__ method, a
 * buffer exporter, a garbage collection), and what it could change is checked
 * again after it.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define HEADER_SIZE 4
#define MAX_FRAME 0xFFFFFFFFu

static uint32_t
read_header(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) |
           (uint32_t)p[3];
}

static void
write_header(unsigned char *p, uint32_t size)
{
    p[0] = (unsigned char)(size >> 24);
    p[1] = (unsigned char)(size >> 16);
    p[2] = (unsigned char)(size >> 8);
    p[3] = (unsigned char)size;
}

/* The payload size of the whole frame at data[pos:end], or -1 if there is
 * none: fewer than 4 bytes left, a header over *limit*, or a frame that ends
 * past *end*. Requires 0 <= pos <= end. */
static Py_ssize_t
whole_frame(const unsigned char *data, Py_ssize_t pos, Py_ssize_t end, Py_ssize_t limit)
{
    Py_ssize_t room = end - pos;
    if (room < HEADER_SIZE) {
        return -1;
    }
    uint32_t size = read_header(data + pos);
    /* Compared in 64 bits: a 32-bit Py_ssize_t cannot hold every size. */
    if (limit < 0 || (uint64_t)size > (uint64_t)limit ||
        (uint64_t)size > (uint64_t)(room - HEADER_SIZE)) {
        return -1;
    }
    return (Py_ssize_t)size;
}

/* An index argument as Py_ssize_t, clamped on overflow: the callers only
 * compare it, and every comparison gives the same answer with the exact
 * value (positions beyond the range fail the range check either way). */
static int
as_ssize(PyObject *obj, Py_ssize_t *out)
{
    Py_ssize_t value = PyNumber_AsSsize_t(obj, NULL);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    *out = value;
    return 0;
}

/* ValueError for a bad pos/end, showing the exact values as given. */
static void
range_error(PyObject *pos_obj, PyObject *end_obj, Py_ssize_t nbytes)
{
    PyObject *pos = PyNumber_Index(pos_obj);
    PyObject *end = pos == NULL ? NULL : PyNumber_Index(end_obj);
    if (end != NULL) {
        PyErr_Format(PyExc_ValueError,
                     "split_frames: need 0 <= pos <= end <= len(buf), "
                     "got pos=%S, end=%S, len(buf)=%zd",
                     pos, end, nbytes);
    }
    Py_XDECREF(pos);
    Py_XDECREF(end);
}

static PyObject *
split_frames(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError,
                     "split_frames() takes exactly 5 positional arguments (%zd given)", nargs);
        return NULL;
    }
    /* Before the buffer is taken: __index__ methods may run Python code. */
    Py_ssize_t pos, end, limit, max_count;
    if (as_ssize(args[1], &pos) < 0 || as_ssize(args[2], &end) < 0 ||
        as_ssize(args[3], &limit) < 0 || as_ssize(args[4], &max_count) < 0) {
        return NULL;
    }

    Py_buffer view;
    PyObject *list = NULL, *next = NULL, *result = NULL;
    Py_ssize_t count = 0, i, size;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        /* Not a buffer, or a non-contiguous one (BufferError): one TypeError
         * for both, as in the pure-Python version. Other errors (a released
         * memoryview, a closed mmap) pass through unchanged. */
        if (PyErr_ExceptionMatches(PyExc_TypeError) ||
            PyErr_ExceptionMatches(PyExc_BufferError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError,
                         "split_frames: buf must be a C-contiguous bytes-like object, got %R",
                         (PyObject *)Py_TYPE(args[0]));
        }
        return NULL;
    }
    const unsigned char *data = view.buf;
    if (pos < 0 || pos > end || end > view.len) {
        range_error(args[1], args[2], view.len);
        goto done;
    }
    if (max_count < 0) {
        PyErr_Format(PyExc_ValueError, "split_frames: max_count must be >= 0, got %S", args[4]);
        goto done;
    }

    /* First pass: count the frames, so that the list is allocated once. */
    for (Py_ssize_t p = pos; count < max_count && (size = whole_frame(data, p, end, limit)) >= 0;
         p += HEADER_SIZE + size) {
        count++;
    }
    list = PyList_New(count);
    if (list == NULL) {
        goto done;
    }
    /* Second pass: the payloads. PyList_New may have run a garbage
     * collection, whose finalizers may have rewritten the buffer's bytes
     * (its size cannot change while we hold it), so each header is checked
     * again; the result is then what this pass saw. */
    for (i = 0; i < count && (size = whole_frame(data, pos, end, limit)) >= 0; i++) {
        PyObject *payload =
            PyBytes_FromStringAndSize((const char *)data + pos + HEADER_SIZE, size);
        if (payload == NULL) {
            goto done;
        }
        PyList_SET_ITEM(list, i, payload);
        pos += HEADER_SIZE + size;
    }
    if (i < count && PyList_SetSlice(list, i, count, NULL) < 0) {
        goto done;
    }
    next = PyLong_FromSsize_t(pos);
    if (next != NULL) {
        result = PyTuple_Pack(2, list, next);
    }

done:
    /* A list cut short by an error holds NULL slots: its deallocation skips them. */
    Py_XDECREF(next);
    Py_XDECREF(list);
    PyBuffer_Release(&view);
    return result;
}

static PyObject *
join_frames(PyObject *module, PyObject *messages)
{
    (void)module;
    if (!PyList_CheckExact(messages) && !PyTuple_CheckExact(messages)) {
        PyErr_Format(PyExc_TypeError, "join_frames: messages must be a list or a tuple, got %R",
                     (PyObject *)Py_TYPE(messages));
        return NULL;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(messages);
    PyObject **items = PySequence_Fast_ITEMS(messages);

    /* First pass: check every item and add up the size. */
    Py_ssize_t total = 0;
    int too_long = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!PyBytes_CheckExact(items[i])) {
            PyErr_Format(PyExc_TypeError, "join_frames: item %zd is %R, not bytes", i,
                         (PyObject *)Py_TYPE(items[i]));
            return NULL;
        }
        Py_ssize_t size = PyBytes_GET_SIZE(items[i]);
        if ((size_t)size > MAX_FRAME) {
            PyErr_Format(PyExc_OverflowError,
                         "join_frames: item %zd is %zd bytes, over the frame limit (4294967295)",
                         i, size);
            return NULL;
        }
        /* Reported after the loop, so that a bad item later on wins, as in Python. */
        if (too_long || size > PY_SSIZE_T_MAX - HEADER_SIZE - total) {
            too_long = 1;
        }
        else {
            total += HEADER_SIZE + size;
        }
    }
    if (too_long) {
        PyErr_SetString(PyExc_OverflowError,
                        "join_frames: the frames would total more than sys.maxsize bytes");
        return NULL;
    }

    /* Second pass: copy. Nothing since the first pass ran Python code (a bytes
     * object is not tracked by the garbage collector), so the container and
     * its items are as checked; the room check only guards the copy. */
    PyObject *joined = PyBytes_FromStringAndSize(NULL, total);
    if (joined == NULL) {
        return NULL;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(joined);
    Py_ssize_t room = total;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t size = PyBytes_GET_SIZE(items[i]);
        if (size > room - HEADER_SIZE) {
            Py_DECREF(joined);
            PyErr_SetString(PyExc_RuntimeError, "join_frames: messages changed while joined");
            return NULL;
        }
        write_header(out, (uint32_t)size);
        memcpy(out + HEADER_SIZE, PyBytes_AS_STRING(items[i]), (size_t)size);
        out += HEADER_SIZE + size;
        room -= HEADER_SIZE + size;
    }
    return joined;
}

/* take_frame(decoder, lock, record, /): one whole message out of a
 * StreamDecoder, without a lock of its own (see _codec.take_frame, which
 * documents the contract and is the pure-Python twin).
 *
 * Atomic with respect to every other Python thread: from the check of *lock*
 * to the store of the new read position, this function holds the GIL and
 * runs no Python code (the attributes are a __slots__ class's, the lock is a
 * _thread.lock, and nothing allocated here is tracked by the garbage
 * collector, so no collection and no finalizer can run). The decoder's other
 * mutators run only while holding *lock*, so they are never seen half done. */
static PyObject *str_locked, *str_rpos, *str_wpos, *str_buf, *str_groups, *str_broken,
    *str_direct, *str_max;

/* The int value of decoder.<name>, or -1 with an exception set. */
static Py_ssize_t
ssize_attr(PyObject *obj, PyObject *name)
{
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL) {
        return -1;
    }
    Py_ssize_t result = PyLong_AsSsize_t(value);
    Py_DECREF(value);
    return result;
}

/* 1 if decoder.<name> is None, 0 if not, -1 on error. */
static int
attr_is_none(PyObject *obj, PyObject *name)
{
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL) {
        return -1;
    }
    int result = value == Py_None;
    Py_DECREF(value);
    return result;
}

static PyObject *
take_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError,
                     "take_frame() takes exactly 3 positional arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *dec = args[0], *record = args[2];
    if (!PyList_CheckExact(record)) {
        PyErr_Format(PyExc_TypeError, "take_frame: record must be a list, got %R",
                     (PyObject *)Py_TYPE(record));
        return NULL;
    }
    Py_ssize_t r = ssize_attr(dec, str_rpos);
    if (r == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t w = ssize_attr(dec, str_wpos);
    if (w == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (w - r < HEADER_SIZE) {
        Py_RETURN_NONE;
    }
    /* None: the caller holds the lock itself. Checked after the cheap test
     * above (nothing changes in between: no Python code runs). */
    if (args[1] != Py_None) {
        PyObject *locked = PyObject_CallMethodNoArgs(args[1], str_locked);
        if (locked == NULL) {
            return NULL;
        }
        int held = PyObject_IsTrue(locked);
        Py_DECREF(locked);
        if (held) {
            return held < 0 ? NULL : Py_NewRef(Py_None);
        }
    }
    /* Descriptors pending, a broken decoder, a direct read: the slow path. */
    PyObject *groups = PyObject_GetAttr(dec, str_groups);
    if (groups == NULL) {
        return NULL;
    }
    int busy = PyObject_IsTrue(groups);
    Py_DECREF(groups);
    if (busy) {
        return busy < 0 ? NULL : Py_NewRef(Py_None);
    }
    int ok = attr_is_none(dec, str_broken);
    if (ok > 0) {
        ok = attr_is_none(dec, str_direct);
    }
    if (ok <= 0) {
        return ok < 0 ? NULL : Py_NewRef(Py_None);
    }
    Py_ssize_t limit = ssize_attr(dec, str_max);
    if (limit == -1 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *buf = PyObject_GetAttr(dec, str_buf);
    if (buf == NULL) {
        return NULL;
    }
    Py_buffer view;
    int got = PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE);
    Py_DECREF(buf);
    if (got < 0) {
        return NULL;
    }
    PyObject *payload = NULL, *pos = NULL;
    Py_ssize_t size = -1;
    if (r >= 0 && w <= view.len) {
        size = whole_frame(view.buf, r, w, limit);
    }
    if (size < 0) {
        PyBuffer_Release(&view);
        Py_RETURN_NONE;
    }
    payload = PyBytes_FromStringAndSize((const char *)view.buf + r + HEADER_SIZE, size);
    PyBuffer_Release(&view);
    if (payload == NULL) {
        return NULL;
    }
    pos = PyLong_FromSsize_t(r + HEADER_SIZE + size);
    if (pos == NULL || PyList_Append(record, payload) < 0) {
        goto fail;
    }
    /* The last step: consumed, and recorded just before. */
    if (PyObject_SetAttr(dec, str_rpos, pos) < 0) {
        (void)PyList_SetSlice(record, PyList_GET_SIZE(record) - 1, PyList_GET_SIZE(record),
                              NULL);
        goto fail;
    }
    Py_DECREF(pos);
    return payload;

fail:
    Py_XDECREF(pos);
    Py_DECREF(payload);
    return NULL;
}

static PyMethodDef methods[] = {
    {"split_frames", (PyCFunction)(void (*)(void))split_frames, METH_FASTCALL,
     "split_frames(buf, pos, end, limit, max_count, /)\n--\n\n"
     "The payloads of the whole frames in buf[pos:end], and where they stop.\n"
     "See unix_socketpair._framing.py_split_frames for the contract."},
    {"join_frames", join_frames, METH_O,
     "join_frames(messages, /)\n--\n\n"
     "Frame every message of messages (bytes) into one bytes object.\n"
     "See unix_socketpair._framing.py_join_frames for the contract."},
    {"take_frame", (PyCFunction)(void (*)(void))take_frame, METH_FASTCALL,
     "take_frame(decoder, lock, record, /)\n--\n\n"
     "One whole buffered message out of a StreamDecoder, atomically, or None.\n"
     "See unix_socketpair._codec.py_take_frame for the contract."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "unix_socketpair._speedups",
    .m_doc = "The C implementation of unix_socketpair._framing (optional).",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    /* Interned once, kept for the life of the process (as CPython's own
     * _Py_IDENTIFIER strings are). */
    static const char *names[] = {"locked", "_rpos", "_wpos", "_buf",
                                  "_groups", "_broken", "_direct", "_max"};
    PyObject **slots_[] = {&str_locked, &str_rpos, &str_wpos, &str_buf,
                           &str_groups, &str_broken, &str_direct, &str_max};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (*slots_[i] == NULL && (*slots_[i] = PyUnicode_InternFromString(names[i])) == NULL) {
            return NULL;
        }
    }
    return PyModuleDef_Init(&module_def);
}
