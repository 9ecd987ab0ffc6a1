#include "io/files.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace et {

namespace fs = std::filesystem;

std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  ET_CHECK(f.good(), path, ": cannot open for reading (", std::strerror(errno), ")");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

bool file_exists(const std::string& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec);
}

bool dir_exists(const std::string& path) {
  std::error_code ec;
  return fs::is_directory(path, ec);
}

std::string path_join(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  if (b.empty()) return a;
  return (fs::path(a) / b).string();
}

void make_dirs(const std::string& path) {
  std::error_code ec;
  fs::create_directories(path, ec);
  ET_CHECK(!ec, path, ": cannot create directory (", ec.message(), ")");
}

void write_file_atomic(const std::string& path, const void* bytes, size_t size) {
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ET_CHECK(fd >= 0, tmp, ": cannot create (", std::strerror(errno), ")");
  const char* p = static_cast<const char*>(bytes);
  size_t left = size;
  while (left > 0) {
    ssize_t w = ::write(fd, p, left);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      int e = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      fail(tmp, ": write failed (", std::strerror(e), ")");
    }
    p += w;
    left -= static_cast<size_t>(w);
  }
  bool ok = ::fsync(fd) == 0;
  ok = (::close(fd) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    fail(path, ": cannot finish atomic write (", std::strerror(e), ")");
  }
}

void write_text_atomic(const std::string& path, const std::string& text) {
  write_file_atomic(path, text.data(), text.size());
}

void replace_dir_atomic(const std::string& tmp, const std::string& dst) {
  std::error_code ec;
  std::string old = dst + ".old." + std::to_string(::getpid());
  bool had = fs::exists(dst, ec);
  if (had) {
    fs::rename(dst, old, ec);
    ET_CHECK(!ec, dst, ": cannot move aside (", ec.message(), ")");
  }
  fs::rename(tmp, dst, ec);
  ET_CHECK(!ec, dst, ": cannot rename ", tmp, " into place (", ec.message(), ")");
  if (had) fs::remove_all(old, ec);
}

json read_json_file(const std::string& path) {
  std::string text = read_text_file(path);
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    fail(path, ": invalid JSON (", e.what(), ")");
  }
}

void write_json_atomic(const std::string& path, const json& j) {
  write_text_atomic(path, j.dump(2) + "\n");
}

MappedFile::~MappedFile() {
  if (data && size) ::munmap(const_cast<unsigned char*>(data), size);
}

std::shared_ptr<MappedFile> map_file(const std::string& path) {
  auto m = std::make_shared<MappedFile>();
  m->path = path;
  int fd = ::open(path.c_str(), O_RDONLY);
  ET_CHECK(fd >= 0, path, ": cannot open (", std::strerror(errno), ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    fail(path, ": cannot stat");
  }
  m->size = static_cast<size_t>(st.st_size);
  if (m->size > 0) {
    void* p = ::mmap(nullptr, m->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      fail(path, ": mmap failed (", std::strerror(errno), ")");
    }
    m->data = static_cast<const unsigned char*>(p);
  }
  ::close(fd);
  return m;
}

}  // namespace et
