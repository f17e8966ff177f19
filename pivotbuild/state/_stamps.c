/* The seal's stamps checked against the file system in one pass in C
 * (stamptable.py: StampTable.changed), compiled at install where a C compiler
 * is (hatch_build.py).
 *
 * A no-op's one real cost is a `stat` of every path the seal holds: 2,000
 * on compare.py's small lattice, 30,000 at 10,000 stages.  In Python each
 * costs the system call and a stat_result made and taken apart, 2.2 us here;
 * in C, 0.9.  Where this module is not built stamptable.py does the same in
 * Python: the answers are the same.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <sys/stat.h>

PyDoc_STRVAR(changed_doc,
"changed(names, flat, lo, hi, skip) -> list of int, or None\n\n"
"The indices j in lo..hi, not in the set `skip`, whose path names[j] (bytes)\n"
"has a stamp other than flat[4*j:4*j+4] (size, mtime_ns, inode, ctime_ns,\n"
"as stamps.stamp takes them from os.stat); None as soon as one cannot be\n"
"statted (the caller looks path by path).");

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
    PyObject *found = PyList_New(0);
    if (found == NULL)
        return NULL;
    for (Py_ssize_t j = lo; j < hi; j++) {
        if (skipping) {
            PyObject *index = PyLong_FromSsize_t(j);
            if (index == NULL)
                goto error;
            int in = PySequence_Contains(skip, index);
            Py_DECREF(index);
            if (in < 0)
                goto error;
            if (in)
                continue;
        }
        PyObject *name = PyList_GET_ITEM(names, j);
        if (!PyBytes_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "changed: a name is not bytes");
            goto error;
        }
        struct stat st;
        if (stat(PyBytes_AS_STRING(name), &st) != 0) {
            Py_DECREF(found);
            Py_RETURN_NONE;
        }
        long long now[4] = {
            (long long)st.st_size,
            (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec,
            0, /* (the inode: unsigned, below) */
            (long long)st.st_ctim.tv_sec * 1000000000LL + st.st_ctim.tv_nsec,
        };
        int differs = 0;
        for (int k = 0; k < 4 && !differs; k++) {
            PyObject *value = PyList_GET_ITEM(flat, 4 * j + k);
            if (k == 2) {
                unsigned long long inode = PyLong_AsUnsignedLongLong(value);
                if (inode == (unsigned long long)-1 && PyErr_Occurred()) {
                    if (!PyErr_ExceptionMatches(PyExc_OverflowError))
                        goto error;
                    PyErr_Clear(); /* (no inode of this file system's: another stamp) */
                    differs = 1;
                } else {
                    differs = inode != (unsigned long long)st.st_ino;
                }
                continue;
            }
            int overflow = 0;
            long long sealed = PyLong_AsLongLongAndOverflow(value, &overflow);
            if (sealed == -1 && PyErr_Occurred())
                goto error;
            differs = overflow || sealed != now[k];
        }
        if (differs) {
            PyObject *index = PyLong_FromSsize_t(j);
            if (index == NULL || PyList_Append(found, index) < 0) {
                Py_XDECREF(index);
                goto error;
            }
            Py_DECREF(index);
        }
    }
    return found;
error:
    Py_DECREF(found);
    return NULL;
}

static PyMethodDef methods[] = {
    {"changed", changed, METH_VARARGS, changed_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_stamps", "The seal's stamps checked in one pass (see the source).", -1, methods,
};

/* Raised with every change to what `changed` takes or gives: stamptable.py
 * leaves a module built from another version alone. */
#define API 1

PyMODINIT_FUNC PyInit__stamps(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "API", API) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
