#include <ctype.h>

#include "strutil.h"

void str_upper(char *dst, const char *src, size_t size)
{
    size_t i;

    if (size == 0)
        return;
    for (i = 0; i + 1 < size && src[i] != '\0'; i++)
        dst[i] = (char)toupper((unsigned char)src[i]);
    dst[i] = '\0';
}

void make_bar(char *dst, size_t size, double fraction)
{
    size_t width, i;

    if (size == 0)
        return;
    if (fraction < 0.0)
        fraction = 0.0;
    if (fraction > 1.0)
        fraction = 1.0;
    width = (size_t)(fraction * (double)(size - 1) + 0.5);
    for (i = 0; i < width; i++)
        dst[i] = '#';
    dst[width] = '\0';
}
