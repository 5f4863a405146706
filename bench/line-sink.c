/* line-sink: the consumer end of the log-capture benchmark, the same for every candidate (the raw
 * pipe included), so candidates differ only in what sits between the producer and this pipe.
 *
 *   PRODUCER | line-sink [PREFIX]      or      TOOL running PRODUCER | line-sink [PREFIX]
 *
 * Reads stdin in 1 MiB reads until EOF and checks every line of bench/.tools/bin/line-producer:
 * after PREFIX (e.g. "prod | "; lines without it count as unprefixed and are still checked),
 * "L%09d " must carry the next number (else out_of_order), and "END-OF-PRODUCER" stamps
 * CLOCK_MONOTONIC (the same clock as Python's time.monotonic()) and prints `end_ns=T` at once
 * (for a tool that does not exit by itself). At EOF prints one more line:
 *   lines=N payload=N prefixed=N out_of_order=N end_ns=T eof_ns=T
 * end_ns is 0 when the marker never came. Build: cc -O2 -o line-sink line-sink.c
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static const char *prefix = "";
static size_t plen;
static long lines, payload, prefixed, out_of_order, next_num;
static long long end_ns;

static void line(const char *p, size_t n) {
    lines++;
    if (plen && n >= plen && memcmp(p, prefix, plen) == 0) {
        prefixed++;
        p += plen;
        n -= plen;
    }
    if (n >= 11 && p[0] == 'L' && p[10] == ' ') {
        long v = 0;
        for (int i = 1; i < 10; i++) v = v * 10 + (p[i] - '0');
        payload++;
        if (v != next_num) out_of_order++;
        next_num = v + 1;
    } else if (n >= 15 && memcmp(p, "END-OF-PRODUCER", 15) == 0 && !end_ns) {
        end_ns = now_ns();
        printf("end_ns=%lld\n", end_ns);
        fflush(stdout);
    }
}

int main(int argc, char **argv) {
    if (argc > 1) prefix = argv[1];
    plen = strlen(prefix);
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (len == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
        ssize_t r = read(0, buf + len, cap - len);
        if (r <= 0) break;
        len += (size_t)r;
        char *s = buf, *e = buf + len, *nl;
        while ((nl = memchr(s, '\n', (size_t)(e - s)))) {
            line(s, (size_t)(nl - s));
            s = nl + 1;
        }
        len = (size_t)(e - s);
        memmove(buf, s, len);
    }
    if (len) line(buf, len);
    printf("lines=%ld payload=%ld prefixed=%ld out_of_order=%ld end_ns=%lld eof_ns=%lld\n", lines,
           payload, prefixed, out_of_order, end_ns, now_ns());
    return 0;
}
