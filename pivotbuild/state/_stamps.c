/* The seal's stamps checked against the file system in one pass in C
 * (stamptable.py: StampTable.changed; seal.py: Seal.holding), compiled at
 * install where a C compiler is (hatch_build.py).
 *
 * A no-op's one real cost is a `stat` of every path the seal holds: 2,000
 * on compare.py's small lattice, 30,000 at 10,000 stages.  In Python each
 * costs the system call and a stat_result made and taken apart, 2.2 us here;
 * in C, 0.9 with the GIL held throughout.  Here the paths and the sealed
 * stamps are read out of their Python objects first, the stats are made with
 * the GIL let go, split between this thread and one more (a stat looks the
 * path up in the kernel's dentry cache, which two cores share well: 2,000
 * stats take 0.45 ms on two threads against 0.9 on one), and the answers
 * compared once the GIL is back.  Where this module is not built
 * stamptable.py and seal.py do the same in Python: the answers are the same.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/stat.h>

/* Below this many paths one thread stats them sooner than two start. */
#define SPLIT_ABOVE 256

/* One path to look at: its name, what it was sealed as, and what stat says now. */
typedef struct {
    const char *path;
    long long sealed[4]; /* size, mtime_ns, inode (as unsigned), ctime_ns */
    int kind;            /* SEALED, ABSENT (sealed as not there) or ALWAYS (differs whatever stat says) */
    int err;             /* stat's errno, 0 if it succeeded */
    struct stat st;
} look_t;

enum { SEALED, ABSENT, ALWAYS };

typedef struct {
    look_t *looks;
    Py_ssize_t lo, hi;
} part_t;

static void *stat_part(void *arg) {
    part_t *part = arg;
    for (Py_ssize_t i = part->lo; i < part->hi; i++) {
        look_t *look = &part->looks[i];
        look->err = stat(look->path, &look->st) == 0 ? 0 : errno;
    }
    return NULL;
}

/* Every look's stat, with the GIL let go: half on a thread of its own when
 * there are many (on one if that thread cannot start). */
static void stat_all(look_t *looks, Py_ssize_t n) {
    part_t first = {looks, 0, n}, second = {looks, n, n};
    pthread_t helper;
    int helping = 0;
    Py_BEGIN_ALLOW_THREADS
    if (n > SPLIT_ABOVE) {
        first.hi = second.lo = n / 2;
        helping = pthread_create(&helper, NULL, stat_part, &second) == 0;
        if (!helping)
            first.hi = n;
    }
    stat_part(&first);
    if (helping)
        pthread_join(helper, NULL);
    Py_END_ALLOW_THREADS
}

/* Whether what stat found differs from what was sealed. */
static int differs(const look_t *look) {
    if (look->kind == ALWAYS)
        return 1;
    if (look->err != 0)
        return look->kind != ABSENT || (look->err != ENOENT && look->err != ENOTDIR);
    if (look->kind == ABSENT)
        return 1;
    const struct stat *st = &look->st;
    return look->sealed[0] != (long long)st->st_size
        || look->sealed[1] != (long long)st->st_mtim.tv_sec * 1000000000LL + st->st_mtim.tv_nsec
        || (unsigned long long)look->sealed[2] != (unsigned long long)st->st_ino
        || look->sealed[3] != (long long)st->st_ctim.tv_sec * 1000000000LL + st->st_ctim.tv_nsec;
}

/* Read `four` sealed values (ints) into look->sealed; a value out of range
 * makes the path differ whatever it is now.  -1 with an exception set on error. */
static int read_sealed(look_t *look, PyObject *const *four) {
    for (int k = 0; k < 4; k++) {
        PyObject *value = four[k];
        if (!PyLong_Check(value)) {
            PyErr_SetString(PyExc_TypeError, "a stamp holds something other than ints");
            return -1;
        }
        int overflow = 0;
        if (k == 2) {
            unsigned long long inode = PyLong_AsUnsignedLongLong(value);
            if (inode == (unsigned long long)-1 && PyErr_Occurred()) {
                if (!PyErr_ExceptionMatches(PyExc_OverflowError))
                    return -1;
                PyErr_Clear(); /* (no inode of this file system's: another stamp) */
                overflow = 1;
            }
            look->sealed[k] = (long long)inode;
        } else {
            look->sealed[k] = PyLong_AsLongLongAndOverflow(value, &overflow);
            if (look->sealed[k] == -1 && PyErr_Occurred())
                return -1;
        }
        if (overflow)
            look->kind = ALWAYS;
    }
    return 0;
}

/* The list of `indices[i]` for each look that differs (i for each, if `indices` is NULL). */
static PyObject *differing(const look_t *looks, Py_ssize_t n, const Py_ssize_t *indices) {
    PyObject *found = PyList_New(0);
    if (found == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!differs(&looks[i]))
            continue;
        PyObject *index = PyLong_FromSsize_t(indices != NULL ? indices[i] : i);
        if (index == NULL || PyList_Append(found, index) < 0) {
            Py_XDECREF(index);
            Py_DECREF(found);
            return NULL;
        }
        Py_DECREF(index);
    }
    return found;
}

PyDoc_STRVAR(changed_doc,
"changed(names, flat, lo, hi, skip) -> list of int, or None\n\n"
"The indices j in lo..hi, not in the set `skip`, whose path names[j] (bytes)\n"
"has a stamp other than flat[4*j:4*j+4] (size, mtime_ns, inode, ctime_ns,\n"
"as stamps.stamp takes them from os.stat); None if one cannot be statted\n"
"(the caller looks path by path).");

static PyObject *changed(PyObject *module, PyObject *args) {
    PyObject *names, *flat, *skip;
    Py_ssize_t lo, hi;
    if (!PyArg_ParseTuple(args, "O!O!nnO", &PyList_Type, &names, &PyList_Type, &flat, &lo, &hi, &skip))
        return NULL;
    if (lo < 0 || lo > hi || hi > PyList_GET_SIZE(names) || 4 * hi > PyList_GET_SIZE(flat)) {
        PyErr_SetString(PyExc_ValueError, "changed: lo..hi outside the table");
        return NULL;
    }
    int skipping = PyObject_IsTrue(skip);
    if (skipping < 0)
        return NULL;
    Py_ssize_t n = 0;
    look_t *looks = PyMem_Calloc(hi - lo + 1, sizeof(look_t));
    Py_ssize_t *indices = PyMem_Calloc(hi - lo + 1, sizeof(Py_ssize_t));
    PyObject *kept = PyList_GetSlice(names, lo, hi); /* (holds the names while the GIL is let go) */
    PyObject *result = NULL;
    if (looks == NULL || indices == NULL || kept == NULL) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t j = lo; j < hi; j++) {
        if (skipping) {
            PyObject *index = PyLong_FromSsize_t(j);
            if (index == NULL)
                goto done;
            int in = PySequence_Contains(skip, index);
            Py_DECREF(index);
            if (in < 0)
                goto done;
            if (in)
                continue;
        }
        PyObject *name = PyList_GET_ITEM(kept, j - lo);
        if (!PyBytes_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "changed: a name is not bytes");
            goto done;
        }
        look_t *look = &looks[n];
        look->path = PyBytes_AS_STRING(name);
        look->kind = SEALED;
        if (read_sealed(look, &PySequence_Fast_ITEMS(flat)[4 * j]) < 0)
            goto done;
        indices[n++] = j;
    }
    stat_all(looks, n);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (looks[i].err != 0) {
            result = Py_None; /* (gone or unreadable: the caller looks path by path) */
            Py_INCREF(result);
            goto done;
        }
    }
    result = differing(looks, n, indices);
done:
    Py_XDECREF(kept);
    PyMem_Free(looks);
    PyMem_Free(indices);
    return result;
}

PyDoc_STRVAR(changed_stamps_doc,
"changed_stamps(names, stamps) -> list of int\n\n"
"The indices j whose path names[j] (bytes) is now other than stamps[j]: a\n"
"tuple (size, mtime_ns, inode, ctime_ns) as stamps.stamp takes them from\n"
"os.stat, or None for a path sealed as absent (which differs if it can be\n"
"statted now, or fails for another reason than not being there).  A path\n"
"sealed with a stamp that cannot be statted now differs.");

static PyObject *changed_stamps(PyObject *module, PyObject *args) {
    PyObject *names, *stamps;
    if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &names, &PyList_Type, &stamps))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(names);
    if (PyList_GET_SIZE(stamps) != n) {
        PyErr_SetString(PyExc_ValueError, "changed_stamps: as many stamps as names");
        return NULL;
    }
    look_t *looks = PyMem_Calloc(n + 1, sizeof(look_t));
    PyObject *kept = PyList_GetSlice(names, 0, n); /* (holds the names while the GIL is let go) */
    PyObject *held = PyList_GetSlice(stamps, 0, n);
    PyObject *result = NULL;
    if (looks == NULL || kept == NULL || held == NULL) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t j = 0; j < n; j++) {
        PyObject *name = PyList_GET_ITEM(kept, j), *sealed = PyList_GET_ITEM(held, j);
        if (!PyBytes_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "changed_stamps: a name is not bytes");
            goto done;
        }
        looks[j].path = PyBytes_AS_STRING(name);
        if (sealed == Py_None) {
            looks[j].kind = ABSENT;
        } else if (PyTuple_Check(sealed) && PyTuple_GET_SIZE(sealed) == 4) {
            looks[j].kind = SEALED;
            if (read_sealed(&looks[j], &PyTuple_GET_ITEM(sealed, 0)) < 0)
                goto done;
        } else {
            PyErr_SetString(PyExc_TypeError, "changed_stamps: a stamp is not a tuple of four ints, nor None");
            goto done;
        }
    }
    stat_all(looks, n);
    result = differing(looks, n, NULL);
done:
    Py_XDECREF(kept);
    Py_XDECREF(held);
    PyMem_Free(looks);
    return result;
}

PyDoc_STRVAR(apart_doc,
"apart(stages, changed, n) -> list of int\n\n"
"The keys of the dict `stages` (stage -> list of path indices below `n`)\n"
"whose paths include none of `changed` (path indices): the stages a seal\n"
"still holds, once `changed_stamps` said which paths changed.");

static PyObject *apart(PyObject *module, PyObject *args) {
    PyObject *stages, *changed;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "O!O!n", &PyDict_Type, &stages, &PyList_Type, &changed, &n))
        return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "apart: n below 0");
        return NULL;
    }
    unsigned char *moved = PyMem_Calloc(n + 1, 1);
    if (moved == NULL)
        return PyErr_NoMemory();
    PyObject *found = NULL;
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(changed); k++) {
        Py_ssize_t j = PyLong_AsSsize_t(PyList_GET_ITEM(changed, k));
        if (j == -1 && PyErr_Occurred())
            goto done;
        if (j >= 0 && j < n)
            moved[j] = 1;
    }
    found = PyList_New(0);
    if (found == NULL)
        goto done;
    Py_ssize_t at = 0;
    PyObject *stage, *own;
    while (PyDict_Next(stages, &at, &stage, &own)) {
        if (!PyList_Check(own)) {
            PyErr_SetString(PyExc_TypeError, "apart: a stage's paths are not a list");
            Py_CLEAR(found);
            goto done;
        }
        int holds = 1;
        for (Py_ssize_t k = 0; k < PyList_GET_SIZE(own) && holds; k++) {
            Py_ssize_t j = PyLong_AsSsize_t(PyList_GET_ITEM(own, k));
            if (j == -1 && PyErr_Occurred()) {
                Py_CLEAR(found);
                goto done;
            }
            holds = j >= 0 && j < n && !moved[j];
        }
        if (holds && PyList_Append(found, stage) < 0) {
            Py_CLEAR(found);
            goto done;
        }
    }
done:
    PyMem_Free(moved);
    return found;
}

static PyMethodDef methods[] = {
    {"changed", changed, METH_VARARGS, changed_doc},
    {"changed_stamps", changed_stamps, METH_VARARGS, changed_stamps_doc},
    {"apart", apart, METH_VARARGS, apart_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_stamps", "The seal's stamps checked in one pass (see the source).", -1, methods,
};

/* Raised with every change to what the functions take or give: stamptable.py
 * leaves a module built from another version alone. */
#define API 3

PyMODINIT_FUNC PyInit__stamps(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "API", API) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
