/* The common HTTP/1.1 message read in one pass, or declined: see fastparse.py, which is the only
 * caller and says what "common" means. Every byte is checked against a table of what may stand
 * there; anything outside the narrow subset this reads returns None, and the caller hands the
 * bytes to llhttp, so this can only be as strict as llhttp or stricter, never more lenient.
 * tests/test_fastparse.py checks with hypothesis that what this accepts, llhttp reads alike.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_LENGTH_DIGITS 15 /* a longer Content-Length goes to llhttp, which checks overflow */

static unsigned char token[256];  /* RFC 9110 token: a header name */
static unsigned char value[256];  /* a field value: HTAB, visible ASCII, SP, obs-text (not DEL) */
static unsigned char target[256]; /* origin-form path and query: RFC 3986 pchar, '/', '?' */

/* Methods llhttp knows that a proxy sees every day (CONNECT and the WebDAV family go to llhttp),
 * and their bytes objects, made once. */
#define N_METHODS 7
static const char *method_names[N_METHODS] = {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"};
static PyObject *methods[N_METHODS];

/* The bytes objects of recent header names and short values, reused when the same bytes come
 * again: a client or backend sends the same names (and mostly the same values) on every message,
 * so each reuse saves an allocation, and the router's dict lookups by name find the very object,
 * its hash already computed. A fixed table indexed by a hash of the bytes: a miss overwrites the
 * slot, so memory stays bounded whatever a peer sends. */
#define CACHE_SLOTS 256
#define CACHE_MAX_LEN 64
static PyObject *names_seen[CACHE_SLOTS];
static PyObject *values_seen[CACHE_SLOTS];

static PyObject *cached_bytes(PyObject **table, const unsigned char *p, Py_ssize_t len) {
    if (len > CACHE_MAX_LEN)
        return PyBytes_FromStringAndSize((const char *)p, len);
    uint32_t h = 2166136261u; /* FNV-1a */
    for (Py_ssize_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 16777619u;
    PyObject **slot = &table[(h ^ (h >> 16)) & (CACHE_SLOTS - 1)];
    PyObject *seen = *slot;
    if (seen != NULL && PyBytes_GET_SIZE(seen) == len && memcmp(PyBytes_AS_STRING(seen), p, (size_t)len) == 0) {
        Py_INCREF(seen);
        return seen;
    }
    PyObject *fresh = PyBytes_FromStringAndSize((const char *)p, len);
    if (fresh == NULL)
        return NULL;
    Py_INCREF(fresh);
    Py_XSETREF(*slot, fresh);
    return fresh;
}

static void set_range(unsigned char *table, int lo, int hi) {
    for (int c = lo; c <= hi; c++)
        table[c] = 1;
}

static void set_chars(unsigned char *table, const char *chars) {
    for (; *chars; chars++)
        table[(unsigned char)*chars] = 1;
}

/* Append the bytes (from the table when seen before) to a list: 0, or -1 with an exception set. */
static int append_cached(PyObject *list, PyObject **table, const unsigned char *p, Py_ssize_t len) {
    PyObject *o = cached_bytes(table, p, len);
    if (o == NULL)
        return -1;
    int err = PyList_Append(list, o);
    Py_DECREF(o);
    return err;
}

/* Case-insensitive compare of a header name with a lower-case literal of the same length. */
static int name_is(const unsigned char *name, Py_ssize_t len, const char *lower, Py_ssize_t lower_len) {
    if (len != lower_len)
        return 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        unsigned char c = name[i];
        if (c >= 'A' && c <= 'Z')
            c += 32;
        if (c != (unsigned char)lower[i])
            return 0;
    }
    return 1;
}

#define NAME_IS(p, n, lit) name_is((p), (n), (lit), (Py_ssize_t)(sizeof(lit) - 1))

/* Header lines from p[i] through the blank line. Fills names and values; returns the offset of
 * the body, or -1 to decline. *length is the Content-Length (-1 if none). */
static Py_ssize_t scan_fields(const unsigned char *p, Py_ssize_t n, Py_ssize_t i,
                              PyObject *names, PyObject *values, long long *length) {
    *length = -1;
    for (;;) {
        if (i + 1 < n && p[i] == '\r' && p[i + 1] == '\n')
            return i + 2; /* the blank line: the head ends */
        Py_ssize_t name_at = i;
        while (i < n && token[p[i]])
            i++;
        Py_ssize_t name_len = i - name_at;
        if (name_len == 0 || i >= n || p[i] != ':')
            return -1;
        i++;
        while (i < n && (p[i] == ' ' || p[i] == '\t'))
            i++; /* leading OWS is not part of the value; trailing is (llhttp keeps it, as must we) */
        Py_ssize_t value_at = i;
        while (i < n && value[p[i]])
            i++;
        if (i + 1 >= n || p[i] != '\r' || p[i + 1] != '\n')
            return -1;
        Py_ssize_t value_len = i - value_at;
        i += 2;
        const unsigned char *name = p + name_at, *val = p + value_at;
        switch (name_len) { /* only names that change framing or the connection need a look */
        case 14:
            if (NAME_IS(name, name_len, "content-length")) {
                if (*length >= 0 || value_len == 0 || value_len > MAX_LENGTH_DIGITS)
                    return -1;
                long long v = 0;
                for (Py_ssize_t k = 0; k < value_len; k++) {
                    if (val[k] < '0' || val[k] > '9')
                        return -1;
                    v = v * 10 + (val[k] - '0');
                }
                *length = v;
            }
            break;
        case 10:
            if (NAME_IS(name, name_len, "connection") && !NAME_IS(val, value_len, "keep-alive"))
                return -1;
            break;
        case 17:
        case 7:
        case 6: /* other framing, another protocol, an interim answer: llhttp's to handle */
            if (NAME_IS(name, name_len, "transfer-encoding") || NAME_IS(name, name_len, "upgrade")
                || NAME_IS(name, name_len, "expect"))
                return -1;
            break;
        default:
            break;
        }
        if (append_cached(names, names_seen, name, name_len) || append_cached(values, values_seen, val, value_len))
            return -2;
    }
}

/* (first..., names, values, body, head_size) once the fields are read, where first is the
 * method and target of a request or the status of a response; None to decline. */
static PyObject *finish(const unsigned char *p, Py_ssize_t n, Py_ssize_t i, PyObject *first, PyObject *second,
                        int need_length) {
    PyObject *names = PyList_New(0), *values = PyList_New(0);
    if (names == NULL || values == NULL)
        goto error;
    long long length;
    Py_ssize_t body_at = scan_fields(p, n, i, names, values, &length);
    if (body_at == -2)
        goto error;
    if (body_at < 0 || (length < 0 && need_length))
        goto decline; /* a response without a length runs until the backend closes */
    if (length < 0)
        length = 0; /* a request without a length has no body */
    if ((long long)(n - body_at) != length)
        goto decline; /* the body not all here, or bytes after the message */
    Py_ssize_t size = second == NULL ? 5 : 6, k = 0;
    PyObject *out = PyTuple_New(size);
    if (out == NULL)
        goto error;
    Py_INCREF(first);
    PyTuple_SET_ITEM(out, k++, first);
    if (second != NULL) {
        Py_INCREF(second);
        PyTuple_SET_ITEM(out, k++, second);
    }
    PyTuple_SET_ITEM(out, k++, names);
    PyTuple_SET_ITEM(out, k++, values);
    PyObject *rest[2] = {PyBytes_FromStringAndSize((const char *)p + body_at, (Py_ssize_t)length),
                         PyLong_FromSsize_t(body_at)};
    PyTuple_SET_ITEM(out, k++, rest[0]);
    PyTuple_SET_ITEM(out, k++, rest[1]);
    if (rest[0] == NULL || rest[1] == NULL) {
        Py_DECREF(out); /* frees names and values with it */
        return NULL;
    }
    return out;
decline:
    Py_DECREF(names);
    Py_DECREF(values);
    Py_RETURN_NONE;
error:
    Py_XDECREF(names);
    Py_XDECREF(values);
    return NULL;
}

/* The argument of a reader: bytes, or a TypeError. */
static int bytes_arg(PyObject *data, const char *reader) {
    if (PyBytes_Check(data))
        return 1;
    PyErr_Format(PyExc_TypeError, "%s takes bytes, not %.100s", reader, Py_TYPE(data)->tp_name);
    return 0;
}

static PyObject *read_request(PyObject *self, PyObject *data) {
    (void)self;
    if (!bytes_arg(data, "read_request"))
        return NULL;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    PyObject *method = NULL;
    Py_ssize_t i = 0;
    for (int m = 0; m < N_METHODS; m++) {
        size_t len = strlen(method_names[m]);
        if ((Py_ssize_t)len < n && memcmp(p, method_names[m], len) == 0 && p[len] == ' ') {
            method = methods[m];
            i = (Py_ssize_t)len + 1;
            break;
        }
    }
    if (method == NULL || i >= n || p[i] != '/')
        Py_RETURN_NONE;
    Py_ssize_t target_at = i;
    while (i < n && target[p[i]])
        i++;
    Py_ssize_t target_len = i - target_at;
    if (n - i < 11 || memcmp(p + i, " HTTP/1.1\r\n", 11) != 0)
        Py_RETURN_NONE;
    i += 11;
    PyObject *t = PyBytes_FromStringAndSize((const char *)p + target_at, target_len);
    if (t == NULL)
        return NULL;
    PyObject *out = finish(p, n, i, method, t, 0);
    Py_DECREF(t);
    return out;
}

static PyObject *read_response(PyObject *self, PyObject *data) {
    (void)self;
    if (!bytes_arg(data, "read_response"))
        return NULL;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    /* A final status with a body (no 1xx, 204 or 304: they frame differently) and a reason. */
    if (n < 13 || memcmp(p, "HTTP/1.1 ", 9) != 0 || p[9] < '2' || p[9] > '5' || p[10] < '0' || p[10] > '9'
        || p[11] < '0' || p[11] > '9' || p[12] != ' ')
        Py_RETURN_NONE;
    long status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    if (status == 204 || status == 304)
        Py_RETURN_NONE;
    Py_ssize_t i = 13;
    while (i < n && value[p[i]])
        i++;
    if (i + 1 >= n || p[i] != '\r' || p[i + 1] != '\n')
        Py_RETURN_NONE;
    PyObject *first = PyLong_FromLong(status);
    if (first == NULL)
        return NULL;
    PyObject *out = finish(p, n, i + 2, first, NULL, 1);
    Py_DECREF(first);
    return out;
}

static PyMethodDef headscan_methods[] = {
    {"read_request", read_request, METH_O,
     "read_request(data) -> (method, target, names, values, body, head_size) or None"},
    {"read_response", read_response, METH_O,
     "read_response(data) -> (status, names, values, body, head_size) or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef headscan_module = {
    PyModuleDef_HEAD_INIT, "_headscan", "The common HTTP/1.1 message read in one pass (see fastparse.py).",
    -1, headscan_methods,
};

PyMODINIT_FUNC PyInit__headscan(void) {
    set_chars(token, "!#$%&'*+-.^_`|~");
    set_range(token, '0', '9');
    set_range(token, 'A', 'Z');
    set_range(token, 'a', 'z');
    value['\t'] = 1;
    set_range(value, 0x20, 0x7e);
    set_range(value, 0x80, 0xff);
    set_chars(target, "-!$&'()*+,./:;=?@_~%");
    set_range(target, '0', '9');
    set_range(target, 'A', 'Z');
    set_range(target, 'a', 'z');
    for (int m = 0; m < N_METHODS; m++) {
        methods[m] = PyBytes_FromString(method_names[m]);
        if (methods[m] == NULL)
            return NULL;
    }
    return PyModule_Create(&headscan_module);
}
