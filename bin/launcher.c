/* The `pivotbuild` command as installed where a C compiler was at hand: a
 * launcher in front of the Python program (`pivotbuild-python` beside it).
 *
 * A plain build is handed to a build server (docs/server.md: on unless
 * PIVOT_SERVER=0 or in a CI job).  The Python client (pivotbuild/cli/client.py) can only
 * do that after Python's start-up, 11 to 16 ms here, more than the
 * server's whole no-op; this program does it in about a millisecond, then
 * passes Ctrl-C and its kin on and exits with the build's status.
 *
 * It hands a build over only when it can say exactly what the Python
 * client would: the same context bytes (client.context(), marshal version
 * 0), hence the same server, and the same request.  The context's first
 * facts (the Python, its version, the package's place) are not its to
 * know: the Python program writes them for this launcher in the server
 * directory (`NAME.launch`, client.describe) the first time it runs from
 * it.  Whenever anything is not as it expects (no server, a refusal, no
 * such file, bytes that are not UTF-8, a locale whose coercion it does not
 * know...), it runs the Python program, which does everything as before:
 * it can be slower, never different.  The server compares the whole
 * context itself.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <locale.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

extern char **environ;

#define PYTHON_NSIG 65 /* Python's signal.NSIG on Linux: its signals are 1..64 */
#define SOCKET_PATH_MAX 107

/* client.VOLATILE: the variables a server does not compare. */
static const char *const VOLATILE[] = {"_",         "PWD",           "OLDPWD",        "SHLVL",        "COLUMNS",
                                       "LINES",     "MAKEFLAGS",     "MFLAGS",        "MAKELEVEL",    "MAKE_TERMOUT",
                                       "MAKE_TERMERR", "PIVOT_STAGE", "PIVOT_LIFELINE", NULL};
static const char *const SPACES[] = {"mnt", "pid", "net", "user", "uts", "ipc", "cgroup", NULL};
static const int FORWARDED[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};

static char **arguments;
static char self[PATH_MAX];
static int server = -1;

/* The Python program, with this launcher's arguments and environment, and
 * PIVOT_LAUNCHER naming this launcher (the program takes it out of its
 * environment first thing). */
static _Noreturn void python(void) {
    char program[PATH_MAX + 32];
    char *slash = strrchr(self, '/');
    if (!slash) {
        fputs("pivotbuild: cannot tell where this program is (no /proc/self/exe, and not found by its name);"
              " run it by its path, or mount /proc\n",
              stderr);
        exit(2);
    }
    snprintf(program, sizeof program, "%.*s/pivotbuild-python", (int)(slash - self), self);
    if (server >= 0)
        close(server);
    setenv("PIVOT_LAUNCHER", self, 1);
    execv(program, arguments);
    fprintf(stderr, "pivotbuild: cannot run %s (%s); reinstall pivotbuild\n", program, strerror(errno));
    exit(2);
}

/* -- bytes as Python's marshal writes them (version 0) ------------------ */

typedef struct {
    unsigned char *p;
    size_t n, cap;
} Buf;

static void put(Buf *b, const void *s, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 8192;
        while (cap < b->n + n)
            cap *= 2;
        unsigned char *p = realloc(b->p, cap);
        if (!p)
            python();
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void put_byte(Buf *b, unsigned char c) { put(b, &c, 1); }

static void put_i32(Buf *b, int32_t v) {
    uint32_t u = (uint32_t)v;
    unsigned char le[4] = {u & 0xff, (u >> 8) & 0xff, (u >> 16) & 0xff, u >> 24};
    put(b, le, 4);
}

static void m_int(Buf *b, long long v) {
    if (v >= INT32_MIN && v <= INT32_MAX) {
        put_byte(b, 'i');
        put_i32(b, (int32_t)v);
        return;
    }
    /* TYPE_LONG: the count of 15-bit digits (negative for a negative
     * number), then the digits, least significant first */
    unsigned long long m = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    uint16_t digits[8];
    int n = 0;
    while (m) {
        digits[n++] = m & 0x7fff;
        m >>= 15;
    }
    put_byte(b, 'l');
    put_i32(b, v < 0 ? -n : n);
    for (int i = 0; i < n; i++) {
        unsigned char le[2] = {digits[i] & 0xff, digits[i] >> 8};
        put(b, le, 2);
    }
}

static void m_sized(Buf *b, char type, const void *s, size_t n) {
    if (n > INT32_MAX)
        python();
    put_byte(b, type);
    put_i32(b, (int32_t)n);
    put(b, s, n);
}

static void m_bytes(Buf *b, const void *s, size_t n) { m_sized(b, 's', s, n); }
static void m_str(Buf *b, const char *s) { m_sized(b, 'u', s, strlen(s)); }

static void m_tuple(Buf *b, int n) {
    put_byte(b, '(');
    put_i32(b, n);
}

/* Whether s is UTF-8 as Python decodes it strictly (no surrogates, nothing
 * overlong): what Python would hold is then these very bytes. */
static int utf8(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned c = *p;
        int more;
        unsigned min;
        if (c < 0x80) {
            p++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            more = 1, min = 0x80, c &= 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            more = 2, min = 0x800, c &= 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            more = 3, min = 0x10000, c &= 0x07;
        } else {
            return 0;
        }
        p++;
        for (int i = 0; i < more; i++, p++) {
            if ((*p & 0xc0) != 0x80)
                return 0;
            c = (c << 6) | (*p & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
            return 0;
    }
    return 1;
}

/* zlib's crc32 (client.name) */
static uint32_t crc32(const unsigned char *p, size_t n, int reversed) {
    static uint32_t table[256];
    if (!table[1])
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++)
        c = table[(c ^ p[reversed ? n - 1 - i : i]) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

/* client.name: two CRCs of the bytes, the second of them reversed */
static void name(const unsigned char *p, size_t n, char out[17]) {
    snprintf(out, 17, "%08x%08x", crc32(p, n, 0), crc32(p, n, 1));
}

/* A whole small file (/proc's or ours); 0 if it cannot be read. */
static int slurp(const char *path, Buf *b) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    for (;;) {
        char chunk[4096];
        ssize_t got = read(fd, chunk, sizeof chunk);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            close(fd);
            return 0;
        }
        if (got == 0)
            break;
        put(b, chunk, (size_t)got);
    }
    close(fd);
    return 1;
}

/* -- what the Python client decides before anything else ---------------- */

static int blank(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

/* Whether the variable `name` says one of `words` (blanks around it, any case). */
static int says(const char *name, const char *const words[]) {
    const char *v = getenv(name);
    if (!v)
        return 0;
    while (blank(*v))
        v++;
    size_t n = strlen(v);
    while (n && blank(v[n - 1]))
        n--;
    for (int i = 0; words[i]; i++)
        if (strlen(words[i]) == n && strncasecmp(v, words[i], n) == 0)
            return 1;
    return 0;
}

/* client.enabled: PIVOT_SERVER says; without it, yes, except in a CI job */
static int enabled(void) {
    static const char *const yes[] = {"1", "on", "yes", "true", NULL};
    static const char *const no[] = {"0", "off", "no", "false", NULL};
    static const char *const unset[] = {"", NULL};
    if (says("PIVOT_SERVER", yes))
        return 1;
    if (says("PIVOT_SERVER", no))
        return 0;
    return !getenv("CI") || says("CI", unset) || says("CI", no);
}

/* client._make_descriptors: make 4.3's job pool as descriptors, this process's own */
static int make_descriptors(void) {
    const char *flags = getenv("MAKEFLAGS");
    if (!flags)
        return 0;
    static const char *const prefixes[] = {"--jobserver-auth=", "--jobserver-fds=", NULL};
    const char *p = flags;
    while (*p) {
        while (*p && blank(*p))
            p++;
        const char *word = p;
        while (*p && !blank(*p))
            p++;
        for (int i = 0; prefixes[i]; i++) {
            size_t k = strlen(prefixes[i]);
            if ((size_t)(p - word) >= k && strncmp(word, prefixes[i], k) == 0 && strncmp(word + k, "fifo:", 5) != 0)
                return 1;
        }
    }
    return 0;
}

/* client.directory: where this user's servers listen, private; 0 if not usable */
static int directory(char *out, size_t size) {
    const char *base = getenv("PIVOT_SERVER_DIR");
    if (base && *base) {
        snprintf(out, size, "%s", base);
    } else {
        const char *runtime = getenv("XDG_RUNTIME_DIR");
        if (runtime && *runtime)
            snprintf(out, size, "%s%spivotbuild", runtime, runtime[strlen(runtime) - 1] == '/' ? "" : "/");
        else
            snprintf(out, size, "/tmp/pivotbuild-server-%u", (unsigned)getuid());
    }
    size_t n = strlen(out);
    if (n + (n && out[n - 1] == '/' ? 0 : 1) + 16 + 5 > SOCKET_PATH_MAX)
        return 0;
    if (mkdir(out, 0700) != 0 && errno != EEXIST)
        return 0;
    struct stat st;
    if (lstat(out, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != getuid() || (st.st_mode & 077))
        return 0;
    return 1;
}

static void join(char *out, size_t size, const char *dir, const char *leaf) {
    size_t n = strlen(dir);
    snprintf(out, size, "%s%s%s", dir, n && dir[n - 1] == '/' ? "" : "/", leaf);
}

/* -- the environment, as Python's os.environ holds it ------------------- */

typedef struct {
    const char *key; /* not NUL-terminated: keylen bytes */
    size_t keylen;
    const char *value;
} Var;

static Var *vars;
static size_t nvars;
static char coerced[64]; /* LC_CTYPE=... as Python sets it (PEP 538), or "" */

static int by_key(const void *a, const void *b) {
    const Var *x = a, *y = b;
    size_t n = x->keylen < y->keylen ? x->keylen : y->keylen;
    int c = memcmp(x->key, y->key, n);
    return c ? c : (x->keylen > y->keylen) - (x->keylen < y->keylen);
}

static int is(const Var *v, const char *key) { return strlen(key) == v->keylen && memcmp(v->key, key, v->keylen) == 0; }

/* Python coerces the C locale (PEP 538): with LC_ALL unset and LC_CTYPE
 * resolving to C or POSIX, it sets LC_CTYPE to the first of C.UTF-8, C.utf8
 * and UTF-8 the C library takes, in its own environment. */
static void coercion(void) {
    const char *all = getenv("LC_ALL");
    const char *no = getenv("PYTHONCOERCECLOCALE");
    if ((all && *all) || (no && strcmp(no, "0") == 0))
        return;
    setlocale(LC_CTYPE, ""); /* (a locale that is not installed leaves "C": Python coerces that too) */
    const char *ctype = setlocale(LC_CTYPE, NULL);
    if (!ctype || (strcmp(ctype, "C") != 0 && strcmp(ctype, "POSIX") != 0))
        return;
    static const char *const targets[] = {"C.UTF-8", "C.utf8", "UTF-8", NULL};
    for (int i = 0; targets[i]; i++)
        if (setlocale(LC_CTYPE, targets[i])) {
            snprintf(coerced, sizeof coerced, "LC_CTYPE=%s", targets[i]);
            break;
        }
    setlocale(LC_CTYPE, "C");
}

/* The variables, first of each name (as Python's os.environ), sorted by
 * name; the Python program's own PIVOT_LAUNCHER left out.  0 if one is not
 * UTF-8. */
static int environment(void) {
    coercion();
    size_t n = 0;
    for (char **e = environ; *e; e++)
        n++;
    vars = calloc(n + 1, sizeof *vars);
    if (!vars)
        return 0;
    char **all = environ;
    size_t count = 0;
    for (size_t i = 0; i <= n; i++) {
        const char *entry = i < n ? all[i] : coerced;
        if (!*entry)
            continue;
        const char *eq = strchr(entry, '=');
        if (!eq)
            continue;
        if (!utf8(entry))
            return 0;
        Var v = {entry, (size_t)(eq - entry), eq + 1};
        if (is(&v, "PIVOT_LAUNCHER") || (i < n && *coerced && is(&v, "LC_CTYPE")))
            continue; /* (Python replaces LC_CTYPE where it coerces) */
        int seen = 0;
        for (size_t j = 0; j < count && !seen; j++)
            seen = vars[j].keylen == v.keylen && memcmp(vars[j].key, v.key, v.keylen) == 0;
        if (!seen)
            vars[count++] = v;
    }
    nvars = count;
    qsort(vars, nvars, sizeof *vars, by_key);
    return 1;
}

static int volatile_var(const Var *v) {
    for (int i = 0; VOLATILE[i]; i++)
        if (is(v, VOLATILE[i]))
            return 1;
    return 0;
}

static void m_keyed(Buf *b, const Var *v) {
    m_sized(b, 'u', v->key, v->keylen);
    m_str(b, v->value);
}

/* -- the context (client.context), after the facts the Python program wrote */

static int context(Buf *b, const unsigned char *head, size_t headlen, int headcount) {
    m_tuple(b, headcount + 13);
    put(b, head, headlen);
    m_int(b, getuid());
    m_int(b, geteuid());
    m_int(b, getgid());
    m_int(b, getegid());
    int ngroups = getgroups(0, NULL);
    gid_t *groups = ngroups > 0 ? calloc((size_t)ngroups, sizeof *groups) : NULL;
    if (ngroups < 0 || (ngroups > 0 && (!groups || getgroups(ngroups, groups) != ngroups)))
        return 0;
    for (int i = 1; i < ngroups; i++) /* (sorted, as the Python client sorts them) */
        for (int j = i; j > 0 && groups[j - 1] > groups[j]; j--) {
            gid_t t = groups[j];
            groups[j] = groups[j - 1];
            groups[j - 1] = t;
        }
    m_tuple(b, ngroups);
    for (int i = 0; i < ngroups; i++)
        m_int(b, groups[i]);
    free(groups);
    Buf limits = {0};
    if (!slurp("/proc/self/limits", &limits) || !limits.n)
        return 0; /* (the Python client lists them otherwise) */
    m_bytes(b, limits.p, limits.n);
    free(limits.p);
    cpu_set_t cpus;
    if (sched_getaffinity(0, sizeof cpus, &cpus) != 0)
        return 0;
    m_tuple(b, CPU_COUNT(&cpus));
    for (int i = 0; i < CPU_SETSIZE; i++)
        if (CPU_ISSET(i, &cpus))
            m_int(b, i);
    errno = 0;
    int nice = getpriority(PRIO_PROCESS, 0);
    if (errno)
        return 0;
    m_int(b, nice);
    /* ignored: Python's start-up ignores SIGPIPE and SIGXFSZ itself */
    int ignored[PYTHON_NSIG], nignored = 0;
    for (int n = 1; n < PYTHON_NSIG; n++) {
        struct sigaction sa;
        if (n == SIGPIPE || n == SIGXFSZ || (sigaction(n, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN))
            ignored[nignored++] = n;
    }
    m_tuple(b, nignored);
    for (int i = 0; i < nignored; i++)
        m_int(b, ignored[i]);
    sigset_t mask;
    if (sigprocmask(SIG_BLOCK, NULL, &mask) != 0)
        return 0;
    int blocked = 0;
    for (int n = 1; n < PYTHON_NSIG; n++)
        blocked += sigismember(&mask, n) == 1;
    m_tuple(b, blocked);
    for (int n = 1; n < PYTHON_NSIG; n++)
        if (sigismember(&mask, n) == 1)
            m_int(b, n);
    m_tuple(b, 7);
    for (int i = 0; SPACES[i]; i++) {
        char path[64], link[256];
        snprintf(path, sizeof path, "/proc/self/ns/%s", SPACES[i]);
        ssize_t k = readlink(path, link, sizeof link - 1);
        link[k > 0 ? k : 0] = 0;
        if (!utf8(link))
            return 0;
        m_str(b, link);
    }
    Buf cgroup = {0};
    slurp("/proc/self/cgroup", &cgroup); /* (b"" where it cannot be read, as the Python client) */
    m_bytes(b, cgroup.p ? (const char *)cgroup.p : "", cgroup.n);
    free(cgroup.p);
    size_t kept = 0;
    for (size_t i = 0; i < nvars; i++)
        kept += !volatile_var(&vars[i]);
    m_tuple(b, (int)kept);
    for (size_t i = 0; i < nvars; i++)
        if (!volatile_var(&vars[i])) {
            m_tuple(b, 2);
            m_keyed(b, &vars[i]);
        }
    return 1;
}

/* What the Python program wrote for this launcher (client.describe):
 *   "PVLAUNCH1\n", this launcher's "DEV INO MTIME_NS SIZE\n", the count of
 *   facts that follow as a line, then those facts, marshalled. */
static int described(const char *where, Buf *head, int *count) {
    char leaf[32], path[PATH_MAX + 64];
    name((const unsigned char *)self, strlen(self), leaf);
    strcat(leaf, ".launch");
    join(path, sizeof path, where, leaf);
    Buf file = {0};
    if (!slurp(path, &file))
        return 0;
    struct stat st;
    char stamp[128];
    if (stat(self, &st) != 0)
        return 0;
    int k = snprintf(stamp, sizeof stamp, "PVLAUNCH1\n%llu %llu %lld %lld\n", (unsigned long long)st.st_dev,
                     (unsigned long long)st.st_ino, (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec,
                     (long long)st.st_size);
    if (file.n < (size_t)k + 2 || memcmp(file.p, stamp, (size_t)k) != 0)
        return 0; /* (another install's, or this one's before it was replaced) */
    unsigned char *p = file.p + k, *end = file.p + file.n;
    unsigned char *eol = memchr(p, '\n', (size_t)(end - p));
    if (!eol)
        return 0;
    *count = atoi((const char *)p);
    if (*count <= 0)
        return 0;
    put(head, eol + 1, (size_t)(end - eol - 1));
    free(file.p);
    return 1;
}

/* -- the request, and the answers --------------------------------------- */

static void m_key(Buf *b, const char *key) { m_str(b, key); }

static int request(Buf *b, int argc, char **argv, const Buf *facts) {
    put_byte(b, '{');
    m_key(b, "argv");
    put_byte(b, '[');
    put_i32(b, argc - 1);
    for (int i = 1; i < argc; i++) {
        if (!utf8(argv[i]))
            return 0;
        m_str(b, argv[i]);
    }
    m_key(b, "env");
    put_byte(b, '{');
    for (size_t i = 0; i < nvars; i++)
        m_keyed(b, &vars[i]);
    put_byte(b, '0');
    mode_t mask = umask(022);
    umask(mask);
    m_key(b, "umask");
    m_int(b, mask);
    m_key(b, "facts");
    m_bytes(b, facts->p, facts->n);
    m_key(b, "pid");
    m_int(b, getpid());
    put_byte(b, '0');
    return 1;
}

static int send_all(int fd, const unsigned char *p, size_t n) {
    while (n) {
        ssize_t sent = send(fd, p, n, MSG_NOSIGNAL);
        if (sent < 0 && errno == EINTR)
            continue;
        if (sent <= 0)
            return 0;
        p += sent;
        n -= (size_t)sent;
    }
    return 1;
}

static int read_all(int fd, unsigned char *p, size_t n) {
    while (n) {
        ssize_t got = read(fd, p, n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return 0;
        p += got;
        n -= (size_t)got;
    }
    return 1;
}

/* One answer (a marshalled dict of a few keys, client.frame) into `body`. */
static int answer(Buf *body) {
    unsigned char head[4];
    if (!read_all(server, head, 4))
        return 0;
    size_t n = (size_t)head[0] << 24 | (size_t)head[1] << 16 | (size_t)head[2] << 8 | head[3];
    if (n > (1 << 20))
        return 0;
    body->n = 0;
    unsigned char *p = malloc(n ? n : 1);
    if (!p || !read_all(server, p, n))
        return 0;
    put(body, p, n);
    free(p);
    return 1;
}

static int32_t get_i32(const unsigned char *p) {
    return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
}

/* The value of `key` in a marshalled dict whose keys are strings and whose
 * values are True, False, None, small ints or strings: 'T', 'F', 'N', 'i'
 * (with *number) or 's' for a string; 0 if absent or not readable. */
static char lookup(const Buf *body, const char *key, long *number) {
    const unsigned char *p = body->p, *end = body->p + body->n;
    if (p >= end || (*p++ & 0x7f) != '{')
        return 0;
    int want = 0;
    for (int turn = 0; p < end; turn ^= 1) {
        unsigned char type = *p++ & 0x7f; /* (less FLAG_REF) */
        size_t len;
        const unsigned char *text;
        if (type == '0')
            return 0;
        switch (type) {
        case 'T':
        case 'F':
        case 'N':
            if (turn == 1 && want)
                return (char)type;
            continue;
        case 'i':
            if (end - p < 4)
                return 0;
            if (turn == 1 && want) {
                *number = get_i32(p);
                return 'i';
            }
            p += 4;
            continue;
        case 'r':
            p += 4; /* (a reference: a key or value seen before) */
            want = 0;
            continue;
        case 'z':
        case 'Z':
            if (p >= end)
                return 0;
            len = *p++;
            break;
        case 'a':
        case 'A':
        case 'u':
        case 't':
        case 's':
            if (end - p < 4)
                return 0;
            len = (size_t)get_i32(p);
            p += 4;
            break;
        default:
            return 0;
        }
        if ((size_t)(end - p) < len)
            return 0;
        text = p;
        p += len;
        if (turn == 0)
            want = len == strlen(key) && memcmp(text, key, len) == 0;
        else if (want)
            return 's';
    }
    return 0;
}

/* client._await_exit's forwarding: a signal becomes {"signal": N} to the server */
static void forward(int signum) {
    int saved = errno;
    unsigned char frame[4 + 1 + 5 + 6 + 5 + 1] = {0, 0, 0, 18, '{', 'u', 6, 0, 0, 0, 's', 'i', 'g', 'n', 'a', 'l', 'i'};
    frame[17] = signum & 0xff;
    frame[18] = frame[19] = frame[20] = 0;
    frame[21] = '0';
    (void)!send(server, frame, sizeof frame, MSG_NOSIGNAL);
    errno = saved;
}

/* Where this program is (its real path, into `self`): /proc's link, else as
 * the shell found it (argv[0], or the first of PATH's directories holding
 * it); 0 if neither says (`self` empty: the Python program cannot be found
 * beside it, and `python` says so). */
static int locate(const char *name) {
    ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
    if (k > 0 && (size_t)k < sizeof self - 1) {
        self[k] = 0;
        return 1;
    }
    self[0] = 0;
    if (strchr(name, '/'))
        return realpath(name, self) != NULL;
    const char *path = getenv("PATH");
    while (path && *path) {
        const char *end = strchr(path, ':');
        size_t n = end ? (size_t)(end - path) : strlen(path);
        char candidate[PATH_MAX];
        size_t m = strlen(name);
        if (n && n + 1 + m < sizeof candidate) {
            memcpy(candidate, path, n);
            candidate[n] = '/';
            memcpy(candidate + n + 1, name, m + 1);
            if (access(candidate, X_OK) == 0 && realpath(candidate, self))
                return 1;
        }
        path = end ? end + 1 : NULL;
    }
    self[0] = 0;
    return 0;
}

int main(int argc, char **argv) {
    arguments = argv;
    if (!locate(argv[0]) || !enabled() || make_descriptors() || getenv("_PIVOTBUILD_COMPLETE"))
        python();
    char where[PATH_MAX];
    Buf head = {0}, facts = {0}, message = {0};
    int count;
    if (!directory(where, sizeof where) || !described(where, &head, &count) || !environment() ||
        !context(&facts, head.p, head.n, count))
        python();
    char leaf[32], path[PATH_MAX + 64];
    name(facts.p, facts.n, leaf);
    strcat(leaf, ".sock");
    join(path, sizeof path, where, leaf);
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof address.sun_path)
        python();
    strcpy(address.sun_path, path);
    server = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (server < 0 || connect(server, (struct sockaddr *)&address, sizeof address) != 0)
        python(); /* (no server: the Python program starts one once it has built) */
    int here = open(".", O_RDONLY | O_CLOEXEC | O_DIRECTORY);
    if (here < 0 || !request(&message, argc, argv, &facts))
        python();
    Buf framed = {0};
    unsigned char size[4] = {message.n >> 24, (message.n >> 16) & 0xff, (message.n >> 8) & 0xff, message.n & 0xff};
    put(&framed, size, 4);
    put(&framed, message.p, message.n);
    /* the first bytes with the descriptors: the directory and the standard streams */
    int fds[4] = {here, 0, 1, 2};
    char control[CMSG_SPACE(sizeof fds)];
    memset(control, 0, sizeof control);
    size_t first = framed.n < 65536 ? framed.n : 65536;
    struct iovec iov = {framed.p, first};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(cmsg), fds, sizeof fds);
    ssize_t sent;
    do
        sent = sendmsg(server, &msg, MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    if (sent <= 0 || !send_all(server, framed.p + sent, framed.n - (size_t)sent))
        python(); /* (a standard stream closed, EBADF; a server gone meanwhile) */
    close(here);
    Buf reply = {0};
    long code = 0;
    if (!answer(&reply) || lookup(&reply, "ok", &code) != 'T')
        python(); /* refused: busy, another context, not a plain build... */
    /* The build runs in the server from here: never the Python program now. */
    for (size_t i = 0; i < sizeof FORWARDED / sizeof *FORWARDED; i++) {
        struct sigaction sa;
        if (sigaction(FORWARDED[i], NULL, &sa) == 0 && sa.sa_handler == SIG_IGN)
            continue; /* (`nohup`: a hangup stays ignored) */
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = forward;
        sa.sa_flags = SA_RESTART;
        sigemptyset(&sa.sa_mask);
        sigaction(FORWARDED[i], &sa, NULL);
    }
    if (!answer(&reply) || lookup(&reply, "exit", &code) != 'i') {
        signal(SIGPIPE, SIG_IGN); /* (a standard error closed already: the status alone says it) */
        fputs("pivotbuild: the build server stopped before the build ended; what finished is recorded:"
              " run the build again (PIVOT_SERVER=0 builds without a server)\n",
              stderr);
        return 2;
    }
    return (int)code;
}
