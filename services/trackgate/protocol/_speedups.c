/*
 * The AVL record loop of trackgate.protocol._readers, compiled.
 *
 * read_records(body, count, codec) decodes `count` Codec 8, 8 Extended or 16
 * records from the start of `body` and returns (records, end), exactly as
 * _readers._read_records does: the same AvlRecord objects, the same IO
 * dictionaries (keys from the shared decimal key table, unsigned values,
 * hex strings for the 8E variable-length group), the same raw bytes. Data
 * that runs out raises IndexError, which the caller turns into
 * MalformedFrame. Every read is checked against the end of the buffer
 * before it happens, so no input can make it read out of bounds.
 *
 * setup(record_type, io_keys) must be called once before: AvlRecord is a
 * slots dataclass, and records are filled through its slot offsets, the way
 * its own descriptors would, without running the frozen class's __setattr__.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#define CODEC_8 0x08
#define CODEC_8E 0x8E
#define CODEC_16 0x10

/* Field order of AvlRecord; offsets are looked up by these names. */
static const char *FIELD_NAMES[] = {
    "timestamp", "priority", "longitude", "latitude", "altitude", "angle",
    "satellites", "speed", "event_id", "io", "generation_type", "raw",
};
enum {
    F_TIMESTAMP, F_PRIORITY, F_LONGITUDE, F_LATITUDE, F_ALTITUDE, F_ANGLE,
    F_SATELLITES, F_SPEED, F_EVENT_ID, F_IO, F_GENERATION, F_RAW, N_FIELDS
};

static PyTypeObject *record_type = NULL;
static Py_ssize_t offsets[N_FIELDS];
static PyObject *io_keys = NULL; /* tuple of 65,536 decimal strings */

typedef struct {
    const uint8_t *data;
    Py_ssize_t size;
    Py_ssize_t pos;
} Reader;

static int
need(Reader *r, Py_ssize_t n)
{
    if (n < 0 || r->size - r->pos < n) {
        PyErr_Format(PyExc_IndexError,
                     "record data ends at byte %zd, %zd more needed",
                     r->size, n);
        return -1;
    }
    return 0;
}

static inline uint64_t
be(const uint8_t *p, int width)
{
    uint64_t v = 0;
    for (int i = 0; i < width; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

/* Reads an unsigned big-endian value of `width` bytes; the caller checked room. */
static inline uint64_t
take(Reader *r, int width)
{
    uint64_t v = be(r->data + r->pos, width);
    r->pos += width;
    return v;
}

static PyObject *
hex_string(const uint8_t *p, Py_ssize_t n)
{
    static const char digits[] = "0123456789abcdef";
    PyObject *s = PyUnicode_New(2 * n, 127);
    if (s == NULL) {
        return NULL;
    }
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(s);
    for (Py_ssize_t i = 0; i < n; i++) {
        out[2 * i] = (Py_UCS1)digits[p[i] >> 4];
        out[2 * i + 1] = (Py_UCS1)digits[p[i] & 0x0F];
    }
    return s;
}

/* io[key of id] = value; steals `value`, which may be NULL after an error. */
static int
set_io(PyObject *io, Py_ssize_t id, PyObject *value)
{
    if (value == NULL) {
        return -1;
    }
    int failed = PyDict_SetItem(io, PyTuple_GET_ITEM(io_keys, id), value);
    Py_DECREF(value);
    return failed ? -1 : 0;
}

/* The 1/2/4/8-byte IO groups, then 8E's variable-length group, into `io`. */
static int
read_io(Reader *r, int codec, PyObject *io)
{
    const int wide_counts = codec == CODEC_8E;
    const int id_width = codec == CODEC_8 ? 1 : 2;
    const int count_width = wide_counts ? 2 : 1;
    static const int value_widths[] = {1, 2, 4, 8};

    for (int g = 0; g < 4; g++) {
        if (need(r, count_width) < 0) {
            return -1;
        }
        Py_ssize_t n = (Py_ssize_t)take(r, count_width);
        int width = value_widths[g];
        if (need(r, n * (id_width + width)) < 0) {
            return -1;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_ssize_t id = (Py_ssize_t)take(r, id_width);
            if (set_io(io, id, PyLong_FromUnsignedLongLong(take(r, width))) < 0) {
                return -1;
            }
        }
    }
    if (codec != CODEC_8E) {
        return 0;
    }
    if (need(r, 2) < 0) {
        return -1;
    }
    Py_ssize_t n = (Py_ssize_t)take(r, 2);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (need(r, 4) < 0) {
            return -1;
        }
        Py_ssize_t id = (Py_ssize_t)take(r, 2);
        Py_ssize_t length = (Py_ssize_t)take(r, 2);
        if (need(r, length) < 0) {
            return -1;
        }
        PyObject *value = hex_string(r->data + r->pos, length);
        r->pos += length;
        if (set_io(io, id, value) < 0) {
            return -1;
        }
    }
    return 0;
}

static inline void
set_field(PyObject *record, int field, PyObject *value)
{
    /* Steals `value`; the slot of a fresh object is empty. */
    *(PyObject **)((char *)record + offsets[field]) = value;
}

static PyObject *
read_record(Reader *r, int codec)
{
    /* Timestamp 8, priority 1, longitude 4, latitude 4, altitude 2, angle 2,
     * satellites 1, speed 2. */
    if (need(r, 24) < 0) {
        return NULL;
    }
    Py_ssize_t start = r->pos;
    uint64_t timestamp = take(r, 8);
    uint64_t priority = take(r, 1);
    int32_t longitude = (int32_t)(uint32_t)take(r, 4);
    int32_t latitude = (int32_t)(uint32_t)take(r, 4);
    int16_t altitude = (int16_t)(uint16_t)take(r, 2);
    uint64_t angle = take(r, 2);
    uint64_t satellites = take(r, 1);
    uint64_t speed = take(r, 2);

    uint64_t event_id;
    PyObject *generation;
    if (codec == CODEC_8) {
        if (need(r, 2) < 0) { /* event id, total IO count */
            return NULL;
        }
        event_id = take(r, 1);
        r->pos += 1;
        generation = Py_NewRef(Py_None);
    }
    else if (codec == CODEC_8E) {
        if (need(r, 4) < 0) {
            return NULL;
        }
        event_id = take(r, 2);
        r->pos += 2;
        generation = Py_NewRef(Py_None);
    }
    else {
        if (need(r, 4) < 0) { /* event id u16, generation type, total */
            return NULL;
        }
        event_id = take(r, 2);
        generation = PyLong_FromUnsignedLongLong(take(r, 1));
        r->pos += 1;
        if (generation == NULL) {
            return NULL;
        }
    }

    PyObject *io = PyDict_New();
    if (io == NULL || read_io(r, codec, io) < 0) {
        Py_XDECREF(io);
        Py_DECREF(generation);
        return NULL;
    }

    PyObject *record = record_type->tp_alloc(record_type, 0);
    if (record == NULL) {
        Py_DECREF(io);
        Py_DECREF(generation);
        return NULL;
    }
    set_field(record, F_IO, io);
    set_field(record, F_GENERATION, generation);
    PyObject *values[] = {
        PyLong_FromUnsignedLongLong(timestamp),
        PyLong_FromUnsignedLongLong(priority),
        PyFloat_FromDouble((double)longitude / 1e7),
        PyFloat_FromDouble((double)latitude / 1e7),
        PyLong_FromLong(altitude),
        PyLong_FromUnsignedLongLong(angle),
        PyLong_FromUnsignedLongLong(satellites),
        PyLong_FromUnsignedLongLong(speed),
        PyLong_FromUnsignedLongLong(event_id),
        PyBytes_FromStringAndSize((const char *)r->data + start, r->pos - start),
    };
    static const int fields[] = {
        F_TIMESTAMP, F_PRIORITY, F_LONGITUDE, F_LATITUDE, F_ALTITUDE, F_ANGLE,
        F_SATELLITES, F_SPEED, F_EVENT_ID, F_RAW,
    };
    int failed = 0;
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        failed |= values[i] == NULL;
        set_field(record, fields[i], values[i]);
    }
    if (failed) {
        /* A NULL slot is allowed in a slots object: dealloc skips it. */
        Py_DECREF(record);
        return NULL;
    }
    return record;
}

static PyObject *
read_records(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (record_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_speedups.setup() was not called");
        return NULL;
    }
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "read_records(body, count, codec)");
        return NULL;
    }
    Py_ssize_t count = PyLong_AsSsize_t(args[1]);
    long codec = PyLong_AsLong(args[2]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (codec != CODEC_8 && codec != CODEC_8E && codec != CODEC_16) {
        PyErr_Format(PyExc_ValueError, "codec %ld is not an AVL codec", codec);
        return NULL;
    }
    if (count < 0) {
        PyErr_SetString(PyExc_ValueError, "negative record count");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    Reader r = {(const uint8_t *)view.buf, view.len, 0};
    PyObject *records = PyList_New(0);
    if (records == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *record = read_record(&r, (int)codec);
        if (record == NULL || PyList_Append(records, record) < 0) {
            Py_XDECREF(record);
            Py_DECREF(records);
            PyBuffer_Release(&view);
            return NULL;
        }
        Py_DECREF(record);
    }
    PyBuffer_Release(&view);
    PyObject *end = PyLong_FromSsize_t(r.pos);
    if (end == NULL) {
        Py_DECREF(records);
        return NULL;
    }
    PyObject *result = PyTuple_Pack(2, records, end);
    Py_DECREF(records);
    Py_DECREF(end);
    return result;
}

static PyObject *
setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyType_Check(args[0]) || !PyTuple_Check(args[1])
        || PyTuple_GET_SIZE(args[1]) != 0x10000) {
        PyErr_SetString(PyExc_TypeError,
                        "setup(record_type, io_keys): a class and 65,536 keys");
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)args[0];
    Py_ssize_t found[N_FIELDS];
    for (int i = 0; i < N_FIELDS; i++) {
        PyObject *descr = PyDict_GetItemString(type->tp_dict, FIELD_NAMES[i]);
        if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not a slot", type->tp_name,
                         FIELD_NAMES[i]);
            return NULL;
        }
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type != T_OBJECT_EX) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not an object slot",
                         type->tp_name, FIELD_NAMES[i]);
            return NULL;
        }
        found[i] = member->offset;
    }
    memcpy(offsets, found, sizeof(offsets));
    Py_XSETREF(record_type, (PyTypeObject *)Py_NewRef(type));
    Py_XSETREF(io_keys, Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"read_records", (PyCFunction)(void (*)(void))read_records, METH_FASTCALL,
     "read_records(body, count, codec) -> (records, end)"},
    {"setup", (PyCFunction)(void (*)(void))setup, METH_FASTCALL,
     "setup(record_type, io_keys): the class to build and the IO key table"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_speedups",
    .m_doc = "The AVL record loop of trackgate.protocol, compiled.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&module_def);
}
