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
#ifndef Py_T_OBJECT_EX /* Python < 3.12 */
#include <structmember.h>
#define Py_T_OBJECT_EX T_OBJECT_EX
#define Py_READONLY READONLY
#endif

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

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

/* The decoder's fields are read and written through their __slots__ offsets,
 * looked up once per decoder class (a member descriptor each): no attribute
 * lookup, and so no Python code, on the way. */
enum {
    F_INBOX, F_EOF, F_BROKEN, F_DIRECT, F_BUF, F_RPOS, F_WPOS, F_BASE, F_CREDS, F_GROUPS, F_MAX,
    F_COUNT
};
static const char *const field_names[F_COUNT] = {
    "inbox", "_eof", "_broken", "_direct", "_buf", "_rpos", "_wpos", "_base", "creds", "_groups",
    "_max",
};
static PyTypeObject *fields_type; /* the class the offsets are for (a strong reference) */
static Py_ssize_t field_offset[F_COUNT];

#define FIELD(obj, f) (*(PyObject **)((char *)(obj) + field_offset[f]))

/* Look up the slot offsets of *type*'s fields; -1 with TypeError (or the
 * AttributeError of a missing one) if one is not a plain writable slot. */
static int
bind_fields(PyTypeObject *type)
{
    Py_ssize_t offsets[F_COUNT];
    for (int i = 0; i < F_COUNT; i++) {
        PyObject *descr = PyObject_GetAttrString((PyObject *)type, field_names[i]);
        if (descr == NULL) {
            return -1;
        }
        int ok = Py_IS_TYPE(descr, &PyMemberDescr_Type);
        if (ok) {
            PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
            ok = member->type == Py_T_OBJECT_EX && !(member->flags & Py_READONLY);
            offsets[i] = member->offset;
        }
        Py_DECREF(descr);
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "decoder %.200s: %s is not a writable slot",
                         type->tp_name, field_names[i]);
            return -1;
        }
    }
    memcpy(field_offset, offsets, sizeof offsets);
    Py_INCREF(type);
    Py_XSETREF(fields_type, type);
    return 0;
}

/* The int in field *f* of *dec*, or -1 with an exception set. */
static Py_ssize_t
ssize_field(PyObject *dec, int f)
{
    PyObject *value = FIELD(dec, f);
    if (value == NULL || !PyLong_CheckExact(value)) {
        PyErr_Format(PyExc_TypeError, "decoder.%s is not an int", field_names[f]);
        return -1;
    }
    return PyLong_AsSsize_t(value);
}

/* Store *value* (a new reference) in field *f*; returns the old value, for
 * the caller to release once every store is done. */
static PyObject *
swap_field(PyObject *dec, int f, PyObject *value)
{
    PyObject *old = FIELD(dec, f);
    FIELD(dec, f) = value;
    return old;
}

/* take_frame(decoder, lock, record[, need], /): one whole message out of a
 * StreamDecoder, without a lock of its own (see _codec.py_take_frame, which
 * documents the contract and is the pure-Python twin).
 *
 * Atomic with respect to every other Python thread: from the check of *lock*
 * to the store of the new read position, this function holds the GIL and
 * runs no Python code (the fields are a __slots__ class's, read through their
 * offsets; the lock is a _thread.lock; nothing allocated here is tracked by
 * the garbage collector, so no collection and no finalizer can run). The
 * decoder's other mutators run only while holding *lock*, so they are never
 * seen half done.
 *
 * An object without a StreamDecoder's slots (a PacketDecoder, whose messages
 * its own methods take) has nothing this function can take: None. */
static PyObject *str_locked;
static PyTypeObject *declined_type; /* the last such type seen (a strong reference) */

static PyObject *
take_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3 && nargs != 4) {
        PyErr_Format(PyExc_TypeError,
                     "take_frame() takes 3 or 4 positional arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *dec = args[0], *record = args[2];
    PyObject *need = nargs == 4 ? args[3] : Py_None;
    if (!PyList_CheckExact(record)) {
        PyErr_Format(PyExc_TypeError, "take_frame: record must be a list, got %R",
                     (PyObject *)Py_TYPE(record));
        return NULL;
    }
    if (Py_TYPE(dec) != fields_type) {
        if (Py_TYPE(dec) == declined_type) {
            Py_RETURN_NONE;
        }
        if (bind_fields(Py_TYPE(dec)) < 0) {
            if (!PyErr_ExceptionMatches(PyExc_TypeError) &&
                !PyErr_ExceptionMatches(PyExc_AttributeError)) {
                return NULL;
            }
            PyErr_Clear();
            Py_INCREF(Py_TYPE(dec));
            Py_XSETREF(declined_type, Py_TYPE(dec));
            Py_RETURN_NONE;
        }
    }
    Py_ssize_t r = ssize_field(dec, F_RPOS);
    if (r == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t w = ssize_field(dec, F_WPOS);
    if (w == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (w - r < HEADER_SIZE) {
        /* Nothing at all, and open: what next_message() answers NEED_DATA to
         * at once (the same test). */
        if (r == w && need != Py_None && FIELD(dec, F_EOF) == Py_False &&
            FIELD(dec, F_BROKEN) == Py_None && FIELD(dec, F_DIRECT) == Py_None) {
            return Py_NewRef(need);
        }
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
    PyObject *groups = FIELD(dec, F_GROUPS);
    int busy = groups == NULL ? 1 : PyObject_IsTrue(groups);
    if (busy || FIELD(dec, F_BROKEN) != Py_None || FIELD(dec, F_DIRECT) != Py_None) {
        return busy < 0 ? NULL : Py_NewRef(Py_None);
    }
    Py_ssize_t limit = ssize_field(dec, F_MAX);
    if (limit == -1 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *buf = FIELD(dec, F_BUF);
    Py_buffer view;
    if (buf == NULL || PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE) < 0) {
        if (buf == NULL) {
            PyErr_SetString(PyExc_TypeError, "take_frame: decoder._buf is not set");
        }
        return NULL;
    }
    Py_ssize_t size = -1;
    if (r >= 0 && w <= view.len) {
        size = whole_frame(view.buf, r, w, limit);
    }
    if (size < 0) {
        PyBuffer_Release(&view);
        Py_RETURN_NONE;
    }
    PyObject *payload = PyBytes_FromStringAndSize((const char *)view.buf + r + HEADER_SIZE, size);
    PyBuffer_Release(&view);
    if (payload == NULL) {
        return NULL;
    }
    PyObject *pos = PyLong_FromSsize_t(r + HEADER_SIZE + size);
    if (pos == NULL || PyList_Append(record, payload) < 0) {
        Py_XDECREF(pos);
        Py_DECREF(payload);
        return NULL;
    }
    /* The last step: consumed, and recorded just before (a store that cannot
     * fail). */
    Py_XDECREF(swap_field(dec, F_RPOS, pos));
    return payload;
}

/* read_commit(decoder, sock, flags, /): one read from a stream socket into a
 * StreamDecoder's buffer and, in the usual case, its accounting, in one call
 * (see _codec.StreamDecoder.read_commit, the pure-Python twin, which documents
 * the contract: the answers 0, AGAIN and NOT_USUAL below, and what the caller
 * does with each).
 *
 * The usual case is what a round trip reads: the decoder open, nothing left in
 * its inbox, no read into a caller's buffer under way; then bytes with, at
 * most, the sender's credentials. Its accounting is commit()'s plain case (the
 * write position moves by the count, the credentials record is kept). Any
 * other result (end of file, descriptors, MSG_CTRUNC, other control data) is
 * appended to the inbox exactly as socket.recvmsg_into() returns it, and the
 * caller's commit_read() accounts for it: one place decides what those mean.
 *
 * Signals: the GIL is released around recvmsg(2) unless flags has MSG_DONTWAIT
 * (a read that cannot wait: AsyncChannel's, a spinning Channel's); EINTR is handled as CPython
 * does (the signal handlers run; an exception from one is raised with nothing
 * read, else the call is retried). Once recvmsg(2) has returned bytes, no
 * Python code runs until they are recorded in the decoder (its write position
 * or its inbox), so an exception cannot fall between a read and its record.
 * Only running out of memory there (a few small objects) loses the read, as it
 * does in socket.recvmsg_into().
 *
 * The decoder's fields are read and written through their slot offsets, as
 * in take_frame. */

/* A cmsg buffer the size of _ancillary.ANCBUFSIZE: the most descriptors a
 * peer can send (SCM_MAX_FD) plus one SCM_CREDENTIALS record (3 ints). */
#define ANC_SPACE (CMSG_SPACE(253 * sizeof(int)) + CMSG_SPACE(3 * sizeof(int)))
/* The answers other than a byte count (the twins in _codec.py). */
#define AGAIN (-1)
#define NOT_USUAL (-2)
/* StreamDecoder.get_buffer()'s constants (the r == w case inlined below). */
#define STEADY_CAPACITY (256 * 1024)
#define RETAIN_CAPACITY (4 * 1024 * 1024 + HEADER_SIZE)

/* 1 if the decoder is in the state read_commit handles itself, else 0. */
static int
usual_state(PyObject *dec)
{
    PyObject *inbox = FIELD(dec, F_INBOX);
    return inbox != NULL && PyList_CheckExact(inbox) && PyList_GET_SIZE(inbox) == 0 &&
           FIELD(dec, F_EOF) == Py_False && FIELD(dec, F_BROKEN) == Py_None &&
           FIELD(dec, F_DIRECT) == Py_None;
}

/* The length of the data of *cmsg* within the control buffer of *msg* (as
 * CPython's socket module computes it), or -1 if the record is malformed. */
static Py_ssize_t
cmsg_data_len(const struct msghdr *msg, const struct cmsghdr *cmsg)
{
    const char *start = (const char *)msg->msg_control;
    const char *data = (const char *)CMSG_DATA(cmsg);
    size_t room = msg->msg_controllen - (size_t)((const char *)cmsg - start);
    size_t len = cmsg->cmsg_len < room ? cmsg->cmsg_len : room;
    if (cmsg->cmsg_len < CMSG_LEN(0) || len < (size_t)(data - (const char *)cmsg)) {
        return -1;
    }
    return (Py_ssize_t)(len - (size_t)(data - (const char *)cmsg));
}

static void
close_received_fds(struct msghdr *msg)
{
    for (struct cmsghdr *c = msg->msg_controllen ? CMSG_FIRSTHDR(msg) : NULL; c != NULL;
         c = CMSG_NXTHDR(msg, c)) {
        Py_ssize_t len = cmsg_data_len(msg, c);
        if (len < 0) {
            break;
        }
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int fd;
            for (Py_ssize_t i = 0; i + (Py_ssize_t)sizeof fd <= len; i += (Py_ssize_t)sizeof fd) {
                memcpy(&fd, (const char *)CMSG_DATA(c) + i, sizeof fd);
                (void)close(fd);
            }
        }
    }
}

/* The raw result, as socket.recvmsg_into() returns it: (nbytes, [(level,
 * type, data), ...], msg_flags, None) (the address of a socketpair's peer is
 * None). On failure the descriptors that arrived are closed. */
static PyObject *
raw_result(Py_ssize_t n, struct msghdr *msg)
{
    PyObject *anc = PyList_New(0);
    if (anc == NULL) {
        goto fail;
    }
    for (struct cmsghdr *c = msg->msg_controllen ? CMSG_FIRSTHDR(msg) : NULL; c != NULL;
         c = CMSG_NXTHDR(msg, c)) {
        Py_ssize_t len = cmsg_data_len(msg, c);
        if (len < 0) {
            break; /* malformed: what follows cannot be trusted */
        }
        PyObject *item = Py_BuildValue("(iiy#)", (int)c->cmsg_level, (int)c->cmsg_type,
                                       (const char *)CMSG_DATA(c), len);
        if (item == NULL || PyList_Append(anc, item) < 0) {
            Py_XDECREF(item);
            goto fail;
        }
        Py_DECREF(item);
    }
    PyObject *result = Py_BuildValue("(nOiO)", n, anc, msg->msg_flags, Py_None);
    Py_DECREF(anc);
    if (result != NULL) {
        return result;
    }
    anc = NULL;
fail:
    Py_XDECREF(anc);
    close_received_fds(msg);
    return NULL;
}

static PyObject *str_fileno, *str_get_buffer;

/* The (sock, flags) arguments of read_commit and send_frame: *flags* as an
 * int, and the descriptor as *sock* has it now (-1 once closed: the system
 * call then fails with EBADF, as a closed socket's own methods do). */
static int
sock_args(const char *name, PyObject *sock, PyObject *flags_obj, int *fd, int *flags)
{
    long flags_l = PyLong_AsLong(flags_obj);
    if (flags_l == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (flags_l < INT_MIN || flags_l > INT_MAX) {
        PyErr_Format(PyExc_OverflowError, "%s: flags out of range", name);
        return -1;
    }
    *flags = (int)flags_l;
    PyObject *fileno = PyObject_CallMethodNoArgs(sock, str_fileno);
    if (fileno == NULL) {
        return -1;
    }
    long fd_l = PyLong_AsLong(fileno);
    Py_DECREF(fileno);
    if (fd_l == -1 && PyErr_Occurred()) {
        return -1;
    }
    *fd = fd_l < INT_MIN || fd_l > INT_MAX ? -1 : (int)fd_l;
    return 0;
}

static PyObject *
read_commit(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError,
                     "read_commit() takes exactly 3 positional arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *dec = args[0];
    int fd, flags;
    if (sock_args("read_commit", args[1], args[2], &fd, &flags) < 0) {
        return NULL;
    }
    if (Py_TYPE(dec) != fields_type && bind_fields(Py_TYPE(dec)) < 0) {
        return NULL;
    }
    if (!usual_state(dec)) {
        return PyLong_FromLong(NOT_USUAL);
    }

    /* The buffer: get_buffer()'s usual case (everything consumed, no resize)
     * inlined; the others through get_buffer() itself. */
    Py_buffer view;
    PyObject *buf = FIELD(dec, F_BUF);
    Py_ssize_t r = ssize_field(dec, F_RPOS), w;
    if (r == -1 && PyErr_Occurred()) {
        return NULL;
    }
    w = ssize_field(dec, F_WPOS);
    if (w == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t cap = buf != NULL && PyByteArray_CheckExact(buf) ? PyByteArray_GET_SIZE(buf) : 0;
    if (r == w && cap > 0 && !(w == cap && cap < STEADY_CAPACITY) && cap <= RETAIN_CAPACITY) {
        if (PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE) < 0) {
            return NULL;
        }
        if (r) {
            Py_ssize_t base = ssize_field(dec, F_BASE);
            PyObject *new_base = base == -1 && PyErr_Occurred() ? NULL : PyLong_FromSsize_t(base + r);
            if (new_base == NULL) {
                PyBuffer_Release(&view);
                return NULL;
            }
            PyObject *old_base = swap_field(dec, F_BASE, new_base);
            PyObject *old_r = swap_field(dec, F_RPOS, PyLong_FromLong(0));
            PyObject *old_w = swap_field(dec, F_WPOS, PyLong_FromLong(0));
            Py_XDECREF(old_base);
            Py_XDECREF(old_r);
            Py_XDECREF(old_w);
        }
    }
    else {
        PyObject *space = PyObject_CallMethodNoArgs(dec, str_get_buffer);
        if (space == NULL) {
            return NULL;
        }
        int got = PyObject_GetBuffer(space, &view, PyBUF_WRITABLE);
        Py_DECREF(space); /* the view holds the memoryview */
        if (got < 0) {
            return NULL;
        }
    }

    union {
        struct cmsghdr align;
        char data[ANC_SPACE];
    } control;
    struct iovec iov;
    struct msghdr msg;
    ssize_t n;
    int err;
    for (;;) {
        iov.iov_base = view.buf;
        iov.iov_len = (size_t)view.len;
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.data;
        msg.msg_controllen = sizeof control.data;
        if (flags & MSG_DONTWAIT) {
            /* Cannot wait: the GIL is kept (releasing and taking it back costs
             * more than the call, as in an event loop's own reads). */
            n = recvmsg(fd, &msg, flags);
            err = errno;
        }
        else {
            Py_BEGIN_ALLOW_THREADS
            n = recvmsg(fd, &msg, flags);
            err = errno;
            Py_END_ALLOW_THREADS
        }
        if (n >= 0 || err != EINTR) {
            break;
        }
        if (PyErr_CheckSignals() < 0) {
            PyBuffer_Release(&view);
            return NULL;
        }
    }

    PyObject *result = NULL;
    if (n < 0) {
        if (err == EAGAIN || err == EWOULDBLOCK) {
            result = PyLong_FromLong(AGAIN);
        }
        else {
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
        }
        PyBuffer_Release(&view);
        return result;
    }

    /* From here until the read is recorded, no Python code runs. */
    const char *creds = NULL;
    Py_ssize_t creds_len = 0;
    int usual = n > 0 && !(msg.msg_flags & MSG_CTRUNC) && usual_state(dec);
    for (struct cmsghdr *c = msg.msg_controllen ? CMSG_FIRSTHDR(&msg) : NULL;
         usual && c != NULL; c = CMSG_NXTHDR(&msg, c)) {
#ifdef SCM_CREDENTIALS
        if (creds == NULL && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS &&
            (creds_len = cmsg_data_len(&msg, c)) >= 0) {
            creds = (const char *)CMSG_DATA(c);
            continue;
        }
#endif
        usual = 0;
    }
    PyObject *count = NULL, *new_creds = NULL;
    w = usual ? ssize_field(dec, F_WPOS) : 0;
    if (w == -1 && PyErr_Occurred()) {
        PyErr_Clear(); /* (cannot happen: checked above) the inbox takes it */
        usual = 0;
    }
    if (usual) {
        PyObject *old = FIELD(dec, F_CREDS);
        count = PyLong_FromSsize_t(w + n);
        if (creds != NULL && !(old != NULL && PyBytes_CheckExact(old) &&
                               PyBytes_GET_SIZE(old) == creds_len &&
                               memcmp(PyBytes_AS_STRING(old), creds, (size_t)creds_len) == 0)) {
            new_creds = PyBytes_FromStringAndSize(creds, creds_len);
        }
        else if (creds != NULL) {
            new_creds = Py_NewRef(old); /* the same record: keep the object */
        }
        if (count == NULL || (creds != NULL && new_creds == NULL)) {
            Py_XDECREF(count);
            Py_XDECREF(new_creds);
            PyBuffer_Release(&view);
            return NULL; /* out of memory: the read is lost (as in recvmsg_into) */
        }
        /* commit()'s plain case: the write position, then the credentials. */
        PyObject *old_w = swap_field(dec, F_WPOS, count);
        PyObject *old_creds = new_creds == NULL ? NULL : swap_field(dec, F_CREDS, new_creds);
        Py_XDECREF(old_w);
        Py_XDECREF(old_creds);
        result = PyLong_FromSsize_t(n);
    }
    else {
        PyObject *raw = raw_result(n, &msg);
        PyObject *inbox = FIELD(dec, F_INBOX);
        if (raw != NULL && (inbox == NULL || !PyList_Check(inbox))) {
            PyErr_SetString(PyExc_TypeError, "read_commit: decoder.inbox is not a list");
            close_received_fds(&msg);
        }
        else if (raw != NULL) {
            if (PyList_Append(inbox, raw) == 0) {
                result = PyLong_FromLong(0);
            }
            else {
                close_received_fds(&msg);
            }
        }
        Py_XDECREF(raw);
    }
    PyBuffer_Release(&view);
    return result;
}

/* The largest payload send_frame() takes: _codec.SEND_FRAME_MAX (the one-message
 * fast path's limit); the frame is built on the stack. */
#define SEND_FRAME_MAX (16 * 1024)

static PyObject *
send_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError,
                     "send_frame() takes exactly 3 positional arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *sock = args[0], *data = args[1];
    if (!PyBytes_CheckExact(data)) {
        PyErr_Format(PyExc_TypeError, "send_frame: data must be bytes, not %.100s",
                     Py_TYPE(data)->tp_name);
        return NULL;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    if (size > SEND_FRAME_MAX) {
        PyErr_Format(PyExc_ValueError, "send_frame: %zd bytes is over the %d-byte limit", size,
                     SEND_FRAME_MAX);
        return NULL;
    }
    int fd, flags;
    if (sock_args("send_frame", sock, args[2], &fd, &flags) < 0) {
        return NULL;
    }

    unsigned char frame[HEADER_SIZE + SEND_FRAME_MAX];
    frame[0] = (unsigned char)((size_t)size >> 24);
    frame[1] = (unsigned char)((size_t)size >> 16);
    frame[2] = (unsigned char)((size_t)size >> 8);
    frame[3] = (unsigned char)size;
    memcpy(frame + HEADER_SIZE, PyBytes_AS_STRING(data), (size_t)size);
    size_t len = (size_t)size + HEADER_SIZE;
    ssize_t n;
    int err;
    for (;;) {
        /* A send that cannot wait keeps the GIL (releasing and taking it back
         * costs more than the call: ~430 instructions of the ~1,000 of
         * socket.send, measured). A send that may wait tries that way first:
         * it waits, with the GIL released, only when the socket is full. */
        n = send(fd, frame, len, flags | MSG_DONTWAIT);
        err = errno;
        if (n < 0 && (err == EAGAIN || err == EWOULDBLOCK) && !(flags & MSG_DONTWAIT)) {
            Py_BEGIN_ALLOW_THREADS
            n = send(fd, frame, len, flags);
            err = errno;
            Py_END_ALLOW_THREADS
        }
        if (n >= 0 || err != EINTR) {
            break;
        }
        if (PyErr_CheckSignals() < 0) {
            return NULL;
        }
    }
    if (n < 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromSsize_t((Py_ssize_t)n);
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
     "take_frame(decoder, lock, record, need=None, /)\n--\n\n"
     "One whole buffered message out of a StreamDecoder, atomically, or None.\n"
     "See unix_socketpair._codec.py_take_frame for the contract."},
    {"read_commit", (PyCFunction)(void (*)(void))read_commit, METH_FASTCALL,
     "read_commit(decoder, sock, flags, /)\n--\n\n"
     "One read into a StreamDecoder and, in the usual case, its accounting.\n"
     "See unix_socketpair._codec.StreamDecoder.read_commit for the contract."},
    {"send_frame", (PyCFunction)(void (*)(void))send_frame, METH_FASTCALL,
     "send_frame(sock, data, flags, /)\n--\n\n"
     "Frame data (bytes) and send it with one send(2); the number of bytes sent.\n"
     "See unix_socketpair._codec.py_send_frame for the contract."},
    {NULL, NULL, 0, NULL},
};

static int
exec_module(PyObject *module)
{
    /* For the tests: the control buffer must be the one the Python path uses. */
    if (PyModule_AddIntConstant(module, "SEND_FRAME_MAX", (long)SEND_FRAME_MAX) < 0) {
        return -1;
    }
    return PyModule_AddIntConstant(module, "ANCBUFSIZE", (long)ANC_SPACE);
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
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
    static const char *names[] = {"locked", "fileno", "get_buffer"};
    PyObject **slots_[] = {&str_locked, &str_fileno, &str_get_buffer};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (*slots_[i] == NULL && (*slots_[i] = PyUnicode_InternFromString(names[i])) == NULL) {
            return NULL;
        }
    }
    return PyModuleDef_Init(&module_def);
}
