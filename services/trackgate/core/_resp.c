/*
 * The stream entries of a packet in the Redis wire format, compiled.
 *
 * pack_entries(records, digests, head, received, tail) returns, for each
 * record, the arguments the store script takes per record: the digest, the
 * count of what follows, then the entry's field names and values as RESP
 * bulk strings. It writes exactly what store._pack_entries_python writes
 * (a test holds them equal, and both equal to hiredis's packing), with the
 * same text for every value: str() of ints, repr() of floats, orjson's
 * compact JSON of the IO map.
 *
 * `head` (the imei field), `received` (the received_at field) and `tail`
 * (codec and transport) are fragments shared by the packet, already packed.
 * It returns None when an IO map holds something whose JSON it does not
 * render exactly like orjson (a non-ASCII or escaped string, an int out of
 * 64 bits, another type): the caller then packs in Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
} Buffer;

static int
reserve(Buffer *b, Py_ssize_t n)
{
    if (b->cap - b->len >= n) {
        return 0;
    }
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < n) {
        cap *= 2;
    }
    char *data = PyMem_Realloc(b->data, (size_t)cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static int
put(Buffer *b, const char *p, Py_ssize_t n)
{
    if (reserve(b, n) < 0) {
        return -1;
    }
    memcpy(b->data + b->len, p, (size_t)n);
    b->len += n;
    return 0;
}

#define PUT_LITERAL(b, s) put((b), (s), (Py_ssize_t)(sizeof(s) - 1))

/* Decimal text of v into out (room for 20 digits); returns its length.
 * snprintf costs more than the rest of a short field together. */
static int
format_u64(char *out, unsigned long long v)
{
    char digits[20];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (int i = 0; i < n; i++) {
        out[i] = digits[n - 1 - i];
    }
    return n;
}

static int
format_i64(char *out, long long v)
{
    if (v >= 0) {
        return format_u64(out, (unsigned long long)v);
    }
    out[0] = '-';
    return 1 + format_u64(out + 1, 0ULL - (unsigned long long)v);
}

/* One RESP bulk string: $<length>\r\n<bytes>\r\n */
static int
put_bulk(Buffer *b, const char *p, Py_ssize_t n)
{
    char head[32];
    int h = 1;
    head[0] = '$';
    h += format_u64(head + 1, (unsigned long long)n);
    head[h++] = '\r';
    head[h++] = '\n';
    if (reserve(b, h + n + 2) < 0) {
        return -1;
    }
    memcpy(b->data + b->len, head, (size_t)h);
    memcpy(b->data + b->len + h, p, (size_t)n);
    memcpy(b->data + b->len + h + n, "\r\n", 2);
    b->len += h + n + 2;
    return 0;
}

/* A Python object's str() (or repr()) as UTF-8, appended raw. */
static int
put_text_of(Buffer *b, PyObject *value, int use_repr, int bulk)
{
    PyObject *text = use_repr ? PyObject_Repr(value) : PyObject_Str(value);
    if (text == NULL) {
        return -1;
    }
    Py_ssize_t n;
    const char *p = PyUnicode_AsUTF8AndSize(text, &n);
    int rc = p == NULL ? -1 : (bulk ? put_bulk(b, p, n) : put(b, p, n));
    Py_DECREF(text);
    return rc;
}

/* str(value) of an int, as a bulk string or raw. */
static int
put_int(Buffer *b, PyObject *value, int bulk)
{
    if (PyLong_CheckExact(value)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (!overflow && !(v == -1 && PyErr_Occurred())) {
            char text[32];
            int n = format_i64(text, v);
            return bulk ? put_bulk(b, text, n) : put(b, text, n);
        }
        PyErr_Clear();
    }
    return put_text_of(b, value, 0, bulk);
}

/* repr() of a coordinate, a wire int32 divided by 1e7, without dtoa.
 *
 * The decimal i / 10^7 rounds to the double v, and any decimal with fewer
 * significant digits is at least 1e-7 away from it, far more than half a
 * unit in the last place of any |v| < 256: so the shortest text that reads
 * back as v, which is what repr() writes, is that decimal with its trailing
 * zeros cut (keeping one digit after the point). From |v| >= 1e-4, i.e.
 * |i| >= 1000, repr() writes no exponent. Returns the text's length, or 0
 * when v is not such a value. */
static int
format_coordinate(char *out, double v)
{
    double scaled = v * 1e7;
    if (!(scaled > -2147483649.0 && scaled < 2147483648.0)) {
        return 0; /* also NaN */
    }
    long long i = llround(scaled);
    if ((double)i / 1e7 != v || (i > -1000 && i < 1000)) {
        return 0;
    }
    unsigned long long a = i < 0 ? 0ULL - (unsigned long long)i : (unsigned long long)i;
    unsigned long long frac = a % 10000000ULL;
    int n = 0;
    if (i < 0) {
        out[n++] = '-';
    }
    n += format_u64(out + n, a / 10000000ULL);
    out[n++] = '.';
    char digits[7];
    for (int k = 6; k >= 0; k--) {
        digits[k] = (char)('0' + frac % 10);
        frac /= 10;
    }
    int last = 6;
    while (last > 0 && digits[last] == '0') {
        last--;
    }
    memcpy(out + n, digits, (size_t)last + 1);
    return n + last + 1;
}

/* repr(value) of a float, as a bulk string. */
static int
put_float(Buffer *b, PyObject *value)
{
    if (!PyFloat_CheckExact(value)) {
        return put_text_of(b, value, 1, 1);
    }
    char coordinate[48];
    int n = format_coordinate(coordinate, PyFloat_AS_DOUBLE(value));
    if (n > 0) {
        return put_bulk(b, coordinate, n);
    }
    char *text = PyOS_double_to_string(PyFloat_AS_DOUBLE(value), 'r', 0,
                                       Py_DTSF_ADD_DOT_0, NULL);
    if (text == NULL) {
        return -1;
    }
    int rc = put_bulk(b, text, (Py_ssize_t)strlen(text));
    PyMem_Free(text);
    return rc;
}

/* An ASCII string JSON carries as it is: no quote, backslash or control. */
static const char *
plain_ascii(PyObject *s, Py_ssize_t *n)
{
    if (!PyUnicode_CheckExact(s) || !PyUnicode_IS_ASCII(s)) {
        return NULL;
    }
    const char *p = (const char *)PyUnicode_1BYTE_DATA(s);
    *n = PyUnicode_GET_LENGTH(s);
    for (Py_ssize_t i = 0; i < *n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c < 0x20 || c == '"' || c == '\\' || c == 0x7F) {
            return NULL;
        }
    }
    return p;
}

/* orjson.dumps(io) for maps of plain keys to u64/i64 ints and plain strings.
 * Returns 1 when written, 0 when the map needs orjson itself, -1 on error. */
static int
put_io_json(Buffer *json, PyObject *io)
{
    if (!PyDict_CheckExact(io)) {
        return 0;
    }
    if (PUT_LITERAL(json, "{") < 0) {
        return -1;
    }
    Py_ssize_t pos = 0, n;
    PyObject *key, *value;
    int first = 1;
    while (PyDict_Next(io, &pos, &key, &value)) {
        const char *k = plain_ascii(key, &n);
        if (k == NULL) {
            return 0;
        }
        if ((!first && PUT_LITERAL(json, ",") < 0) || PUT_LITERAL(json, "\"") < 0
            || put(json, k, n) < 0 || PUT_LITERAL(json, "\":") < 0) {
            return -1;
        }
        first = 0;
        if (PyLong_CheckExact(value)) {
            int overflow;
            char text[32];
            int len;
            long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
            if (v == -1 && PyErr_Occurred()) {
                return -1;
            }
            if (!overflow) {
                len = format_i64(text, v);
            }
            else {
                unsigned long long u = PyLong_AsUnsignedLongLong(value);
                if (u == (unsigned long long)-1 && PyErr_Occurred()) {
                    PyErr_Clear(); /* beyond 64 bits: orjson decides */
                    return 0;
                }
                len = format_u64(text, u);
            }
            if (put(json, text, len) < 0) {
                return -1;
            }
            continue;
        }
        const char *s = plain_ascii(value, &n);
        if (s == NULL) {
            return 0;
        }
        if (PUT_LITERAL(json, "\"") < 0 || put(json, s, n) < 0
            || PUT_LITERAL(json, "\"") < 0) {
            return -1;
        }
    }
    return PUT_LITERAL(json, "}") < 0 ? -1 : 1;
}

static PyObject *
attr(PyObject *record, PyObject *name)
{
    return PyObject_GetAttr(record, name);
}

/* Interned attribute names of AvlRecord, in entry order after imei. */
static PyObject *names[11];
static const char *name_text[11] = {
    "timestamp", "priority", "longitude", "latitude", "altitude", "angle",
    "satellites", "speed", "event_id", "io", "generation_type",
};
enum { TIMESTAMP, PRIORITY, LONGITUDE, LATITUDE, ALTITUDE, ANGLE, SATELLITES,
       SPEED, EVENT_ID, IO, GENERATION };

/* Field names as bulk strings, and how each value is rendered. */
static const char *field_bulk[] = {
    "$9\r\ntimestamp\r\n", "$8\r\npriority\r\n", "$9\r\nlongitude\r\n",
    "$8\r\nlatitude\r\n", "$8\r\naltitude\r\n", "$5\r\nangle\r\n",
    "$10\r\nsatellites\r\n", "$5\r\nspeed\r\n", "$8\r\nevent_id\r\n",
};

/* Returns 1 when written, 0 when the caller must pack in Python, -1 on error. */
static int
put_record(Buffer *b, Buffer *json, PyObject *record, PyObject *digest,
           Py_buffer *head, Py_buffer *received, Py_buffer *tail)
{
    PyObject *values[11] = {NULL};
    int rc = -1;
    for (int i = 0; i < 11; i++) {
        if ((values[i] = attr(record, names[i])) == NULL) {
            goto done;
        }
    }
    json->len = 0;
    int io = put_io_json(json, values[IO]);
    if (io <= 0) {
        rc = io;
        goto done;
    }
    char *d;
    Py_ssize_t dn;
    if (PyBytes_AsStringAndSize(digest, &d, &dn) < 0) {
        goto done;
    }
    int has_generation = values[GENERATION] != Py_None;
    if (put_bulk(b, d, dn) < 0
        || (has_generation ? PUT_LITERAL(b, "$2\r\n30\r\n")
                           : PUT_LITERAL(b, "$2\r\n28\r\n")) < 0
        || put(b, head->buf, head->len) < 0) {
        goto done;
    }
    for (int i = TIMESTAMP; i <= EVENT_ID; i++) {
        if (put(b, field_bulk[i], (Py_ssize_t)strlen(field_bulk[i])) < 0) {
            goto done;
        }
        int failed = (i == LONGITUDE || i == LATITUDE) ? put_float(b, values[i])
                                                       : put_int(b, values[i], 1);
        if (failed < 0) {
            goto done;
        }
        if (i == TIMESTAMP && put(b, received->buf, received->len) < 0) {
            goto done;
        }
    }
    if (PUT_LITERAL(b, "$2\r\nio\r\n") < 0 || put_bulk(b, json->data, json->len) < 0
        || put(b, tail->buf, tail->len) < 0) {
        goto done;
    }
    if (has_generation
        && (PUT_LITERAL(b, "$15\r\ngeneration_type\r\n") < 0
            || put_int(b, values[GENERATION], 1) < 0)) {
        goto done;
    }
    rc = 1;
done:
    for (int i = 0; i < 11; i++) {
        Py_XDECREF(values[i]);
    }
    return rc;
}

static PyObject *
pack_entries(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyList_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "pack_entries(records, digests: list, head, received, tail)");
        return NULL;
    }
    PyObject *records = PySequence_Fast(args[0], "records must be a sequence");
    if (records == NULL) {
        return NULL;
    }
    PyObject *digests = args[1];
    Py_ssize_t count = PySequence_Fast_GET_SIZE(records);
    if (PyList_GET_SIZE(digests) != count) {
        Py_DECREF(records);
        PyErr_SetString(PyExc_ValueError, "one digest per record");
        return NULL;
    }
    Py_buffer parts[3];
    int held = 0;
    PyObject *result = NULL;
    Buffer out = {NULL, 0, 0}, json = {NULL, 0, 0};
    for (; held < 3; held++) {
        if (PyObject_GetBuffer(args[2 + held], &parts[held], PyBUF_SIMPLE) < 0) {
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        int rc = put_record(&out, &json, PySequence_Fast_GET_ITEM(records, i),
                            PyList_GET_ITEM(digests, i), &parts[0], &parts[1],
                            &parts[2]);
        if (rc < 0) {
            goto done;
        }
        if (rc == 0) {
            result = Py_NewRef(Py_None);
            goto done;
        }
    }
    result = PyBytes_FromStringAndSize(out.data ? out.data : "", out.len);
done:
    while (held > 0) {
        PyBuffer_Release(&parts[--held]);
    }
    PyMem_Free(out.data);
    PyMem_Free(json.data);
    Py_DECREF(records);
    return result;
}

static PyMethodDef methods[] = {
    {"pack_entries", (PyCFunction)(void (*)(void))pack_entries, METH_FASTCALL,
     "pack_entries(records, digests, head, received, tail) -> bytes | None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_resp",
    .m_doc = "The stream entries of a packet in the Redis wire format, compiled.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__resp(void)
{
    for (int i = 0; i < 11; i++) {
        names[i] = PyUnicode_InternFromString(name_text[i]);
        if (names[i] == NULL) {
            return NULL;
        }
    }
    return PyModule_Create(&module_def);
}
