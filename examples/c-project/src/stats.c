#include <math.h>

#include "stats.h"

struct summary summarize(const double *values, size_t n)
{
    struct summary s = {n, 0.0, 0.0, 0.0, values[0], values[0]};
    double squares = 0.0;
    size_t i;

    for (i = 0; i < n; i++) {
        s.sum += values[i];
        if (values[i] < s.min)
            s.min = values[i];
        if (values[i] > s.max)
            s.max = values[i];
    }
    s.mean = s.sum / (double)n;
    for (i = 0; i < n; i++)
        squares += (values[i] - s.mean) * (values[i] - s.mean);
    s.stddev = sqrt(squares / (double)n);
    return s;
}
