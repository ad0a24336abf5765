/*
 * The stream entries of a packet in the Redis wire format, compiled.
 *
 * pack_entries(records, codec, head, received, tail) returns, for each
 * record, the arguments the store script takes per record: the digest, the
 * count of what follows, then the entry's field names and values as RESP
 * bulk strings; and the number of those arguments. The digest is BLAKE2b
 * (below) of the codec byte and the record's wire bytes. It writes exactly
 * what store._pack_entries_python writes
 * (a test holds them equal, and both equal to hiredis's packing), with the
 * same text for every value: str() of ints, repr() of floats, orjson's
 * compact JSON of the IO map.
 *
 * pack_xadds(records, codec, key, head, received, tail, window) writes the
 * same entries as whole XADD commands, for the store's script-free writes,
 * skipping the records whose digest is in the caller's dedup window.
 *
 * `head` (the imei field), `received` (the received_at field) and `tail`
 * (codec and transport) are fragments shared by the packet, already packed.
 * It returns None when an IO map holds something whose JSON it does not
 * render exactly like orjson (a non-ASCII or escaped string, an int out of
 * 64 bits, another type): the caller then packs in Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* BLAKE2b (RFC 7693) with an 8-byte digest and no key: the dedup digest of
 * a record, hashlib.blake2b(codec byte + wire bytes, digest_size=8), without
 * a Python call per record. A test holds it equal to hashlib's. */
static const uint64_t BLAKE2B_IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL,
    0xa54ff53a5f1d36f1ULL, 0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL,
    0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

static const uint8_t BLAKE2B_SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

typedef struct {
    uint64_t h[8];
    uint64_t bytes; /* compressed so far */
    uint8_t block[128];
    size_t filled;
} Blake2b;

static inline uint64_t
rotr64(uint64_t x, int n)
{
    return (x >> n) | (x << (64 - n));
}

#define MIX(a, b, c, d, x, y)                                                 \
    do {                                                                      \
        v[a] = v[a] + v[b] + (x);                                             \
        v[d] = rotr64(v[d] ^ v[a], 32);                                       \
        v[c] = v[c] + v[d];                                                   \
        v[b] = rotr64(v[b] ^ v[c], 24);                                       \
        v[a] = v[a] + v[b] + (y);                                             \
        v[d] = rotr64(v[d] ^ v[a], 16);                                       \
        v[c] = v[c] + v[d];                                                   \
        v[b] = rotr64(v[b] ^ v[c], 63);                                       \
    } while (0)

static void
blake2b_compress(Blake2b *s, int last)
{
    uint64_t m[16], v[16];
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(m, s->block, sizeof(m)); /* the words are little-endian already */
#else
    for (int i = 0; i < 16; i++) {
        uint64_t w = 0;
        for (int k = 7; k >= 0; k--) {
            w = (w << 8) | s->block[8 * i + k]; /* little-endian words */
        }
        m[i] = w;
    }
#endif
    for (int i = 0; i < 8; i++) {
        v[i] = s->h[i];
        v[i + 8] = BLAKE2B_IV[i];
    }
    v[12] ^= s->bytes; /* the counter's high word stays 0 below 2^64 bytes */
    if (last) {
        v[14] = ~v[14];
    }
    for (int round = 0; round < 12; round++) {
        const uint8_t *z = BLAKE2B_SIGMA[round];
        MIX(0, 4, 8, 12, m[z[0]], m[z[1]]);
        MIX(1, 5, 9, 13, m[z[2]], m[z[3]]);
        MIX(2, 6, 10, 14, m[z[4]], m[z[5]]);
        MIX(3, 7, 11, 15, m[z[6]], m[z[7]]);
        MIX(0, 5, 10, 15, m[z[8]], m[z[9]]);
        MIX(1, 6, 11, 12, m[z[10]], m[z[11]]);
        MIX(2, 7, 8, 13, m[z[12]], m[z[13]]);
        MIX(3, 4, 9, 14, m[z[14]], m[z[15]]);
    }
    for (int i = 0; i < 8; i++) {
        s->h[i] ^= v[i] ^ v[i + 8];
    }
}

static void
blake2b_init(Blake2b *s, size_t digest_size)
{
    memcpy(s->h, BLAKE2B_IV, sizeof(s->h));
    s->h[0] ^= 0x01010000ULL ^ (uint64_t)digest_size; /* no key */
    s->bytes = 0;
    s->filled = 0;
}

static void
blake2b_update(Blake2b *s, const uint8_t *data, size_t n)
{
    while (n > 0) {
        if (s->filled == sizeof(s->block)) {
            /* Only a block known not to be the last one is compressed. */
            s->bytes += sizeof(s->block);
            blake2b_compress(s, 0);
            s->filled = 0;
        }
        size_t take = sizeof(s->block) - s->filled;
        if (take > n) {
            take = n;
        }
        memcpy(s->block + s->filled, data, take);
        s->filled += take;
        data += take;
        n -= take;
    }
}

static void
blake2b_final(Blake2b *s, uint8_t *out, size_t digest_size)
{
    s->bytes += s->filled;
    memset(s->block + s->filled, 0, sizeof(s->block) - s->filled);
    blake2b_compress(s, 1);
    for (size_t i = 0; i < digest_size; i++) {
        out[i] = (uint8_t)(s->h[i / 8] >> (8 * (i % 8)));
    }
}

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
} Buffer;

static int grow(Buffer *b, Py_ssize_t n);

/* Room for n more bytes: the common case inline, growth out of line. */
static inline int
reserve(Buffer *b, Py_ssize_t n)
{
    return b->cap - b->len >= n ? 0 : grow(b, n);
}

static int
grow(Buffer *b, Py_ssize_t n)
{
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

static inline int
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

/* Interned attribute names of AvlRecord, in entry order after imei. */
#define N_NAMES 12
static PyObject *names[N_NAMES];
static const char *name_text[N_NAMES] = {
    "timestamp", "priority", "longitude", "latitude", "altitude", "angle",
    "satellites", "speed", "event_id", "io", "generation_type", "raw",
};
enum { TIMESTAMP, PRIORITY, LONGITUDE, LATITUDE, ALTITUDE, ANGLE, SATELLITES,
       SPEED, EVENT_ID, IO, GENERATION, RAW };

/* Field names as bulk strings, and how each value is rendered. */
static const char *field_bulk[] = {
    "$9\r\ntimestamp\r\n", "$8\r\npriority\r\n", "$9\r\nlongitude\r\n",
    "$8\r\nlatitude\r\n", "$8\r\naltitude\r\n", "$5\r\nangle\r\n",
    "$10\r\nsatellites\r\n", "$5\r\nspeed\r\n", "$8\r\nevent_id\r\n",
};

/* The values of one record's attributes, fetched once. */
typedef struct {
    PyObject *v[N_NAMES];
} Values;

/* The record class whose attributes are read from its slots, and where.
 * AvlRecord is a slots dataclass: an attribute is a member descriptor, and
 * reading it through PyObject_GetAttr cost a sixth of the packer. */
static PyTypeObject *slots_type = NULL;
static PyTypeObject *not_slots_type = NULL;
static Py_ssize_t slot_offsets[N_NAMES];

/* Learns where `type` keeps the attributes; 0 when they are not all plain
 * object slots (the caller then asks PyObject_GetAttr). */
static int
learn_slots(PyTypeObject *type)
{
    if (type == not_slots_type) {
        return 0;
    }
    Py_ssize_t found[N_NAMES];
    for (int i = 0; i < N_NAMES; i++) {
        PyObject *descr = PyObject_GetAttr((PyObject *)type, names[i]);
        if (descr == NULL) {
            PyErr_Clear();
            not_slots_type = type;
            return 0;
        }
        int slot = Py_IS_TYPE(descr, &PyMemberDescr_Type)
                   && ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX;
        if (slot) {
            found[i] = ((PyMemberDescrObject *)descr)->d_member->offset;
        }
        Py_DECREF(descr);
        if (!slot) {
            not_slots_type = type;
            return 0;
        }
    }
    memcpy(slot_offsets, found, sizeof(found));
    Py_XSETREF(slots_type, (PyTypeObject *)Py_NewRef(type));
    return 1;
}

static int
load_values(Values *values, PyObject *record)
{
    memset(values, 0, sizeof(*values));
    PyTypeObject *type = Py_TYPE(record);
    if (type == slots_type || learn_slots(type)) {
        int complete = 1;
        for (int i = 0; i < N_NAMES && complete; i++) {
            PyObject *value = *(PyObject **)((char *)record + slot_offsets[i]);
            complete = value != NULL;
            values->v[i] = Py_XNewRef(value);
        }
        if (complete) {
            return 0;
        }
        /* An empty slot: let PyObject_GetAttr raise its AttributeError. */
        for (int i = 0; i < N_NAMES; i++) {
            Py_CLEAR(values->v[i]);
        }
    }
    for (int i = 0; i < N_NAMES; i++) {
        if ((values->v[i] = PyObject_GetAttr(record, names[i])) == NULL) {
            return -1;
        }
    }
    return 0;
}

static void
drop_values(Values *values)
{
    for (int i = 0; i < N_NAMES; i++) {
        Py_CLEAR(values->v[i]);
    }
}

/* The dedup digest of a record: BLAKE2b of the codec byte and its wire
 * bytes. Returns 1, or 0 when the record holds no wire bytes (the caller
 * then packs in Python). */
static int
record_digest(Values *values, uint8_t codec, uint8_t digest[8])
{
    PyObject *raw = values->v[RAW];
    if (!PyBytes_CheckExact(raw)) {
        return 0;
    }
    Blake2b hash;
    blake2b_init(&hash, 8);
    blake2b_update(&hash, &codec, 1);
    blake2b_update(&hash, (const uint8_t *)PyBytes_AS_STRING(raw),
                   (size_t)PyBytes_GET_SIZE(raw));
    blake2b_final(&hash, digest, 8);
    return 1;
}

/* The entry's field names and values, after the digest or the XADD head.
 * `json` already holds the IO map's JSON. */
static int
put_fields(Buffer *b, Buffer *json, Values *values, Py_buffer *head,
           Py_buffer *received, Py_buffer *tail)
{
    if (put(b, head->buf, head->len) < 0) {
        return -1;
    }
    for (int i = TIMESTAMP; i <= EVENT_ID; i++) {
        if (put(b, field_bulk[i], (Py_ssize_t)strlen(field_bulk[i])) < 0) {
            return -1;
        }
        PyObject *value = values->v[i];
        int failed = (i == LONGITUDE || i == LATITUDE) ? put_float(b, value)
                                                       : put_int(b, value, 1);
        if (failed < 0) {
            return -1;
        }
        if (i == TIMESTAMP && put(b, received->buf, received->len) < 0) {
            return -1;
        }
    }
    if (PUT_LITERAL(b, "$2\r\nio\r\n") < 0 || put_bulk(b, json->data, json->len) < 0
        || put(b, tail->buf, tail->len) < 0) {
        return -1;
    }
    if (values->v[GENERATION] != Py_None
        && (PUT_LITERAL(b, "$15\r\ngeneration_type\r\n") < 0
            || put_int(b, values->v[GENERATION], 1) < 0)) {
        return -1;
    }
    return 0;
}

/* Loads a record, renders its IO map and computes its digest.
 * Returns 1 when ready, 0 when the caller must pack in Python, -1 on error. */
static int
prepare(Values *values, Buffer *json, PyObject *record, uint8_t codec,
        uint8_t digest[8])
{
    if (load_values(values, record) < 0) {
        return -1;
    }
    json->len = 0;
    int io = put_io_json(json, values->v[IO]);
    if (io <= 0) {
        return io;
    }
    return record_digest(values, codec, digest);
}

/* Writes one record's script arguments (digest, count, entry) and adds
 * their count to *arguments.
 * Returns 1 when written, 0 when the caller must pack in Python, -1 on error. */
static int
put_record(Buffer *b, Buffer *json, PyObject *record, uint8_t codec,
           Py_buffer *head, Py_buffer *received, Py_buffer *tail,
           Py_ssize_t *arguments)
{
    Values values;
    uint8_t digest[8];
    int rc = prepare(&values, json, record, codec, digest);
    if (rc <= 0) {
        drop_values(&values);
        return rc;
    }
    int has_generation = values.v[GENERATION] != Py_None;
    *arguments += has_generation ? 32 : 30;
    rc = (put_bulk(b, (const char *)digest, sizeof(digest)) < 0
          || (has_generation ? PUT_LITERAL(b, "$2\r\n30\r\n")
                             : PUT_LITERAL(b, "$2\r\n28\r\n")) < 0
          || put_fields(b, json, &values, head, received, tail) < 0)
             ? -1
             : 1;
    drop_values(&values);
    return rc;
}

static PyObject *
pack_entries(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "pack_entries(records, codec, head, received, tail)");
        return NULL;
    }
    long codec = PyLong_AsLong(args[1]);
    if (codec == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (codec < 0 || codec > 255) {
        PyErr_SetString(PyExc_ValueError, "codec must fit in a byte");
        return NULL;
    }
    PyObject *records = PySequence_Fast(args[0], "records must be a sequence");
    if (records == NULL) {
        return NULL;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(records);
    Py_buffer parts[3];
    int held = 0;
    PyObject *result = NULL;
    Buffer out = {NULL, 0, 0}, json = {NULL, 0, 0};
    Py_ssize_t arguments = 0;
    for (; held < 3; held++) {
        if (PyObject_GetBuffer(args[2 + held], &parts[held], PyBUF_SIMPLE) < 0) {
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        int rc = put_record(&out, &json, PySequence_Fast_GET_ITEM(records, i),
                            (uint8_t)codec, &parts[0], &parts[1], &parts[2],
                            &arguments);
        if (rc < 0) {
            goto done;
        }
        if (rc == 0) {
            result = Py_NewRef(Py_None);
            goto done;
        }
    }
    result = Py_BuildValue("(y#n)", out.data ? out.data : "", out.len, arguments);
done:
    while (held > 0) {
        PyBuffer_Release(&parts[--held]);
    }
    PyMem_Free(out.data);
    PyMem_Free(json.data);
    Py_DECREF(records);
    return result;
}

/* Whether digest d is one of the n 8-byte slots at p. */
static int
among(const uint8_t *p, Py_ssize_t n, const uint8_t d[8])
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (memcmp(p + 8 * i, d, 8) == 0) {
            return 1;
        }
    }
    return 0;
}

/* pack_xadds(records, codec, key, head, received, tail, window)
 *     -> (commands, new digests, duplicates) | None
 *
 * One XADD <key> * <entry> command per record whose digest is neither one
 * of the 8-byte slots of `window` (bytes) nor earlier in `records`, in the
 * wire format; the digests of those records, concatenated in order; and how
 * many records were skipped. `key` is the stream key as a bulk string.
 * None when a record needs the Python packer (see the module doc). */
static PyObject *
pack_xadds(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "pack_xadds(records, codec, key, head, received, tail, window)");
        return NULL;
    }
    long codec = PyLong_AsLong(args[1]);
    if (codec == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (codec < 0 || codec > 255) {
        PyErr_SetString(PyExc_ValueError, "codec must fit in a byte");
        return NULL;
    }
    PyObject *records = PySequence_Fast(args[0], "records must be a sequence");
    if (records == NULL) {
        return NULL;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(records);
    /* key, head, received, tail, window */
    Py_buffer parts[5];
    int held = 0;
    PyObject *result = NULL;
    Buffer out = {NULL, 0, 0}, json = {NULL, 0, 0}, fresh = {NULL, 0, 0};
    Py_ssize_t duplicates = 0;
    for (; held < 5; held++) {
        if (PyObject_GetBuffer(args[2 + held], &parts[held], PyBUF_SIMPLE) < 0) {
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Values values;
        uint8_t digest[8];
        int rc = prepare(&values, &json, PySequence_Fast_GET_ITEM(records, i),
                         (uint8_t)codec, digest);
        if (rc <= 0) {
            drop_values(&values);
            if (rc == 0) {
                result = Py_NewRef(Py_None);
            }
            goto done;
        }
        if (among((const uint8_t *)parts[4].buf, parts[4].len / 8, digest)
            || among((const uint8_t *)fresh.data, fresh.len / 8, digest)) {
            duplicates++;
            drop_values(&values);
            continue;
        }
        int failed = put(&fresh, (const char *)digest, 8) < 0
                     || (values.v[GENERATION] != Py_None
                             ? PUT_LITERAL(&out, "*33\r\n$4\r\nXADD\r\n")
                             : PUT_LITERAL(&out, "*31\r\n$4\r\nXADD\r\n")) < 0
                     || put(&out, parts[0].buf, parts[0].len) < 0
                     || PUT_LITERAL(&out, "$1\r\n*\r\n") < 0
                     || put_fields(&out, &json, &values, &parts[1], &parts[2],
                                   &parts[3]) < 0;
        drop_values(&values);
        if (failed) {
            goto done;
        }
    }
    result = Py_BuildValue("(y#y#n)", out.data ? out.data : "", out.len,
                           fresh.data ? fresh.data : "", fresh.len, duplicates);
done:
    while (held > 0) {
        PyBuffer_Release(&parts[--held]);
    }
    PyMem_Free(out.data);
    PyMem_Free(json.data);
    PyMem_Free(fresh.data);
    Py_DECREF(records);
    return result;
}

static PyObject *
digest(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data;
    if (nargs != 1 || PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "digest(data)");
        }
        return NULL;
    }
    Blake2b hash;
    uint8_t out[8];
    blake2b_init(&hash, sizeof(out));
    blake2b_update(&hash, data.buf, (size_t)data.len);
    blake2b_final(&hash, out, sizeof(out));
    PyBuffer_Release(&data);
    return PyBytes_FromStringAndSize((const char *)out, sizeof(out));
}

static PyMethodDef methods[] = {
    {"pack_entries", (PyCFunction)(void (*)(void))pack_entries, METH_FASTCALL,
     "pack_entries(records, codec, head, received, tail) -> (bytes, count) | None"},
    {"pack_xadds", (PyCFunction)(void (*)(void))pack_xadds, METH_FASTCALL,
     "pack_xadds(records, codec, key, head, received, tail, window)"
     " -> (commands, new digests, duplicates) | None"},
    {"digest", (PyCFunction)(void (*)(void))digest, METH_FASTCALL,
     "digest(data) -> the 8-byte BLAKE2b digest of data"},
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
    for (int i = 0; i < N_NAMES; i++) {
        names[i] = PyUnicode_InternFromString(name_text[i]);
        if (names[i] == NULL) {
            return NULL;
        }
    }
    return PyModule_Create(&module_def);
}
