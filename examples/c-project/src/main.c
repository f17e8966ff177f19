/* app: read "NAME VALUE" lines from stdin, print a bar chart and statistics. */
#include <stdio.h>
#include <string.h>

#include "stats.h"
#include "strutil.h"

#define MAX_ITEMS 256
#define NAME_LEN 32
#define BAR_LEN 30

int main(void)
{
    static char names[MAX_ITEMS][NAME_LEN];
    static double values[MAX_ITEMS];
    char line[256], name[NAME_LEN], upper[NAME_LEN], bar[BAR_LEN + 1];
    struct summary s;
    size_t n = 0, i;
    double v;

    while (n < MAX_ITEMS && fgets(line, sizeof line, stdin) != NULL) {
        if (line[0] == '#' || sscanf(line, "%31s %lf", name, &v) != 2)
            continue; /* comments and blank lines */
        strcpy(names[n], name);
        values[n] = v;
        n++;
    }
    if (n == 0) {
        fprintf(stderr, "app: no \"NAME VALUE\" lines on stdin\n");
        return 1;
    }

    s = summarize(values, n);
    for (i = 0; i < n; i++) {
        str_upper(upper, names[i], sizeof upper);
        make_bar(bar, sizeof bar, s.max > 0.0 ? values[i] / s.max : 0.0);
        printf("%-10s %8.2f  %s\n", upper, values[i], bar);
    }
    printf("\ncount  %zu\nsum    %.2f\nmean   %.2f\nstddev %.2f\nmin    %.2f\nmax    %.2f\n",
           s.count, s.sum, s.mean, s.stddev, s.min, s.max);
    return 0;
}
