/* A minimal container for node tests: prints one line, then sleeps until stopped.
 * With the argument `once` it exits after the line (for exec); with `alloc` it keeps
 * allocating and touching memory (for memory limits). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void quit(int sig) { (void)sig; _exit(0); }

int main(int argc, char **argv) {
    signal(SIGTERM, quit);
    printf("hello from gyre\n");
    fflush(stdout);
    if (argc > 1 && strcmp(argv[1], "once") == 0) return 0;
    if (argc > 1 && strcmp(argv[1], "alloc") == 0) {
        for (;;) {
            char *chunk = malloc(1 << 20);
            if (chunk) memset(chunk, 1, 1 << 20);
        }
    }
    for (;;) pause();
}
