#ifndef STRUTIL_H
#define STRUTIL_H

#include <stddef.h>

/* Copy src into dst (of size bytes) in upper case, always NUL-terminated. */
void str_upper(char *dst, const char *src, size_t size);

/* Fill dst (of size bytes) with a bar of '#' of length fraction * (size - 1). */
void make_bar(char *dst, size_t size, double fraction);

#endif
