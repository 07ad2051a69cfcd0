/* blkprobe.c - the guest-side helper of the kernel test (built static on the
 * host, copied into the QEMU guest's initramfs; busybox dd cannot tell WHERE
 * a read failed).
 *
 *   blkprobe copy SRC DST OFFSET   read all of SRC with O_DIRECT (1 MiB reads;
 *                                  a failing read is bisected down to single
 *                                  logical blocks),
 *                                  write what was read to DST at byte OFFSET
 *                                  (unreadable sectors as zeroes), fsync DST,
 *                                  print "sectors=N errors=S+L,S+L" (512-byte
 *                                  sectors; "errors=-" when none) and exit 0;
 *                                  exit 1 if SRC cannot be opened or DST fails.
 *   blkprobe write DEV SECTOR N    O_DIRECT write of N sectors at SECTOR, each
 *                                  filled with "blkprobe SECTOR\n" + 0xa5;
 *                                  print "ok" or "error <errno name>", exit 0/1.
 *   blkprobe read DEV SECTOR N     O_DIRECT read of N sectors; "ok"/"error ...".
 *   blkprobe pwrite DEV OFFSET LEN BYTE [fua]
 *                                  O_DIRECT write of LEN bytes of BYTE at byte
 *                                  OFFSET, no fsync. With "fua", the write is
 *                                  submitted through Linux AIO with RWF_DSYNC:
 *                                  the block layer turns that into ONE write
 *                                  with REQ_FUA. (A synchronous O_DSYNC write
 *                                  would also get an fsync, i.e. a flush, from
 *                                  generic_write_sync.) "ok"/"error ...".
 *   blkprobe flush DEV             fsync(DEV): one empty REQ_PREFLUSH bio.
 *
 * Retry granularity is the device's logical block size (BLKSSZGET), so attach
 * nbd devices with "nbd-client -b 512" to get errors sector-exact.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define CHUNK (1024 * 1024)

static void die(const char* what, const char* path) {
  fprintf(stderr, "blkprobe: %s %s: %s\n", what, path, strerror(errno));
  exit(1);
}

static uint64_t dev_size(int fd, const char* path) {
  uint64_t size = 0;
  struct stat st;
  if (fstat(fd, &st) < 0) die("stat", path);
  if (S_ISBLK(st.st_mode)) {
    if (ioctl(fd, BLKGETSIZE64, &size) < 0) die("BLKGETSIZE64", path);
  } else {
    size = (uint64_t)st.st_size;
  }
  return size;
}

static unsigned lbs(int fd) {
  int v = 0;
  if (ioctl(fd, BLKSSZGET, &v) < 0 || v < 512) return 512;
  return (unsigned)v;
}

/* error ranges, merged as they come (reads go forward) */
static uint64_t err_start[4096], err_len[4096];
static unsigned nerr;
static int err_overflow;
static void add_error(uint64_t sector, uint64_t count) {
  if (nerr && err_start[nerr - 1] + err_len[nerr - 1] == sector) {
    err_len[nerr - 1] += count;
  } else if (nerr < 4096) {
    err_start[nerr] = sector;
    err_len[nerr++] = count;
  } else {
    err_overflow = 1;
  }
}

/* A read of [pos, pos+n) failed: bisect down to single blocks, so only the
 * unreadable blocks end up zeroed and listed (few reads for a few bad blocks). */
static void read_bisect(int fd, char* buf, uint64_t pos, size_t n, unsigned bs) {
  if (n <= bs) {
    memset(buf, 0, n);
    add_error(pos / 512, n / 512);
    return;
  }
  size_t half = (n / 2 + bs - 1) / bs * bs;
  if (half >= n) half = n - bs;
  if (pread(fd, buf, half, (off_t)pos) != (ssize_t)half) read_bisect(fd, buf, pos, half, bs);
  if (pread(fd, buf + half, n - half, (off_t)(pos + half)) != (ssize_t)(n - half))
    read_bisect(fd, buf + half, pos + half, n - half, bs);
}

static int do_copy(const char* src, const char* dst, uint64_t off) {
  int in = open(src, O_RDONLY | O_DIRECT);
  if (in < 0) die("open", src);
  int out = open(dst, O_WRONLY);
  if (out < 0) die("open", dst);
  uint64_t size = dev_size(in, src);
  unsigned bs = lbs(in);
  char* buf;
  if (posix_memalign((void**)&buf, 4096, CHUNK)) die("posix_memalign", src);
  for (uint64_t pos = 0; pos < size;) {
    size_t n = size - pos < CHUNK ? (size_t)(size - pos) : CHUNK;
    ssize_t r = pread(in, buf, n, (off_t)pos);
    if (r != (ssize_t)n) read_bisect(in, buf, pos, n, bs);
    if (pwrite(out, buf, n, (off_t)(off + pos)) != (ssize_t)n) die("write", dst);
    pos += n;
  }
  if (fsync(out) < 0) die("fsync", dst);
  printf("sectors=%llu errors=", (unsigned long long)(size / 512));
  if (!nerr) printf("-");
  for (unsigned i = 0; i < nerr; i++)
    printf("%s%llu+%llu", i ? "," : "", (unsigned long long)err_start[i],
           (unsigned long long)err_len[i]);
  printf("%s\n", err_overflow ? ",overflow" : "");
  return 0;
}

static int do_rw(int write, const char* dev, uint64_t sector, uint64_t count) {
  int fd = open(dev, (write ? O_WRONLY : O_RDONLY) | O_DIRECT);
  if (fd < 0) {
    printf("error %s (open)\n", strerrorname_np(errno) ? strerrorname_np(errno) : "?");
    return 1;
  }
  size_t n = (size_t)count * 512;
  char* buf;
  if (posix_memalign((void**)&buf, 4096, n ? n : 512)) die("posix_memalign", dev);
  memset(buf, 0xa5, n);
  for (uint64_t s = 0; s < count; s++)
    snprintf(buf + s * 512, 64, "blkprobe %llu\n", (unsigned long long)(sector + s));
  ssize_t r =
      write ? pwrite(fd, buf, n, (off_t)(sector * 512)) : pread(fd, buf, n, (off_t)(sector * 512));
  int e = errno;
  if (r == (ssize_t)n && write && fsync(fd) < 0) {
    e = errno;
    r = -1;
  }
  close(fd);
  if (r == (ssize_t)n) {
    printf("ok\n");
    return 0;
  }
  printf("error %s\n", r < 0 ? (strerrorname_np(e) ? strerrorname_np(e) : "?") : "short");
  return 1;
}

static const char* ename(int e) {
  return strerrorname_np(e) ? strerrorname_np(e) : "?";
}

static int do_pwrite(const char* dev, uint64_t off, size_t len, int byte, int fua) {
  int fd = open(dev, O_WRONLY | O_DIRECT);
  if (fd < 0) {
    printf("error %s (open)\n", ename(errno));
    return 1;
  }
  char* buf;
  if (posix_memalign((void**)&buf, 4096, len ? len : 512)) die("posix_memalign", dev);
  memset(buf, byte, len);
  long r;
  if (!fua) {
    r = pwrite(fd, buf, len, (off_t)off);
    if (r < 0) r = -errno;
  } else {
    aio_context_t ctx = 0;
    if (syscall(SYS_io_setup, 1, &ctx) < 0) {
      printf("error %s (io_setup)\n", ename(errno));
      return 1;
    }
    struct iocb cb;
    memset(&cb, 0, sizeof cb);
    cb.aio_fildes = (uint32_t)fd;
    cb.aio_lio_opcode = IOCB_CMD_PWRITE;
    cb.aio_buf = (uint64_t)(uintptr_t)buf;
    cb.aio_nbytes = len;
    cb.aio_offset = (int64_t)off;
    cb.aio_rw_flags = RWF_DSYNC;
    struct iocb* cbs[1] = {&cb};
    struct io_event ev;
    if (syscall(SYS_io_submit, ctx, 1, cbs) != 1) {
      printf("error %s (io_submit)\n", ename(errno));
      return 1;
    }
    if (syscall(SYS_io_getevents, ctx, 1, 1, &ev, NULL) != 1) {
      printf("error %s (io_getevents)\n", ename(errno));
      return 1;
    }
    r = (long)ev.res;
    syscall(SYS_io_destroy, ctx);
  }
  close(fd);
  if (r == (long)len) {
    printf("ok\n");
    return 0;
  }
  printf("error %s\n", r < 0 ? ename((int)-r) : "short");
  return 1;
}

static int do_flush(const char* dev) {
  int fd = open(dev, O_WRONLY);
  if (fd < 0 || fsync(fd) < 0) {
    printf("error %s\n", ename(errno));
    return 1;
  }
  close(fd);
  printf("ok\n");
  return 0;
}

int main(int argc, char** argv) {
  if ((argc == 6 || (argc == 7 && !strcmp(argv[6], "fua"))) && !strcmp(argv[1], "pwrite"))
    return do_pwrite(argv[2], strtoull(argv[3], 0, 0), (size_t)strtoull(argv[4], 0, 0),
                     (int)strtol(argv[5], 0, 0), argc == 7);
  if (argc == 3 && !strcmp(argv[1], "flush")) return do_flush(argv[2]);
  if (argc == 5 && !strcmp(argv[1], "copy"))
    return do_copy(argv[2], argv[3], strtoull(argv[4], 0, 0));
  if (argc == 5 && (!strcmp(argv[1], "write") || !strcmp(argv[1], "read")))
    return do_rw(argv[1][0] == 'w', argv[2], strtoull(argv[3], 0, 0), strtoull(argv[4], 0, 0));
  fprintf(stderr,
          "usage: blkprobe copy SRC DST OFFSET | write|read DEV SECTOR N |\n"
          "       pwrite DEV OFFSET LEN BYTE [fua] | flush DEV\n");
  return 2;
}
