#ifndef STATS_H
#define STATS_H

#include <stddef.h>

/* Summary statistics of a list of numbers. */
struct summary {
    size_t count;
    double sum;
    double mean;
    double stddev; /* population standard deviation */
    double min;
    double max;
};

/* Summarise values[0..n); n must be at least 1. */
struct summary summarize(const double *values, size_t n);

#endif
