/* The pod sandbox ("pause") program of tests/it/k8s_cri.rs, built with `gcc -static` at test
 * time because no registry image can be pulled. It holds the pod's namespaces: it sleeps until
 * SIGINT or SIGTERM (then exits 0), and reaps any child re-parented to it (it is pid 1 of the
 * pod when the pod shares one pid namespace). */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) {
  (void)sig;
  _exit(0);
}

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction stop = {.sa_handler = quit};
  struct sigaction child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
  if (sigaction(SIGINT, &stop, NULL) || sigaction(SIGTERM, &stop, NULL) ||
      sigaction(SIGCHLD, &child, NULL)) {
    return 1;
  }
  for (;;) {
    pause();
  }
}
