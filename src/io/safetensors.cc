#include "io/safetensors.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace et {

const Tensor& TensorFile::at(const std::string& name) const {
  auto it = tensors.find(name);
  ET_CHECK(it != tensors.end(), path, ": tensor '", name, "' not found");
  return it->second;
}

TensorFile read_safetensors(const std::string& path) {
  auto file = map_file(path);
  TensorFile out;
  out.path = path;
  ET_CHECK(file->size >= 8, path, ": truncated safetensors file (", file->size,
           " bytes, need at least the 8-byte header length)");
  uint64_t n = 0;
  std::memcpy(&n, file->data, 8);  // little-endian on every supported host
  ET_CHECK(n <= file->size - 8, path, ": header length ", n, " exceeds file size ", file->size,
           " (truncated or not a safetensors file)");
  json header;
  try {
    header = json::parse(file->data + 8, file->data + 8 + n);
  } catch (const json::parse_error& e) {
    fail(path, ": header is not valid JSON (", e.what(), ")");
  }
  ET_CHECK(header.is_object(), path, ": header must be a JSON object");
  const unsigned char* base = file->data + 8 + n;
  const uint64_t data_size = file->size - 8 - n;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  std::shared_ptr<void> owner(file, const_cast<unsigned char*>(file->data));
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") {
      ET_CHECK(it->is_object(), path, ": __metadata__ must be an object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        ET_CHECK(m->is_string(), path, ": __metadata__.", m.key(), " must be a string");
        out.metadata[m.key()] = m->get<std::string>();
      }
      continue;
    }
    const json& e = *it;
    ET_CHECK(
        e.is_object() && e.contains("dtype") && e.contains("shape") && e.contains("data_offsets"),
        path, ": tensor '", name, "' needs dtype, shape and data_offsets");
    ET_CHECK(e["dtype"].is_string(), path, ": tensor '", name, "': dtype must be a string");
    std::string dt = e["dtype"].get<std::string>();
    Tensor t;
    ET_CHECK(dtype_from_name(dt, &t.dtype), path, ": tensor '", name, "' has unsupported dtype '",
             dt, "' (supported: F64 F32 F16 BF16 I64 I32 I8 U8 BOOL)");
    ET_CHECK(e["shape"].is_array(), path, ": tensor '", name, "': shape must be an array");
    for (const auto& d : e["shape"]) {
      ET_CHECK(d.is_number_integer() && d.get<int64_t>() >= 0, path, ": tensor '", name,
               "': shape entries must be non-negative integers");
      t.shape.push_back(d.get<int64_t>());
    }
    const json& off = e["data_offsets"];
    ET_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() &&
                 off[1].is_number_unsigned(),
             path, ": tensor '", name, "': data_offsets must be two non-negative integers");
    uint64_t b = off[0].get<uint64_t>(), en = off[1].get<uint64_t>();
    ET_CHECK(b <= en && en <= data_size, path, ": tensor '", name, "' data [", b, ", ", en,
             ") lies outside the data section of ", data_size, " bytes (truncated file?)");
    ET_CHECK(en - b == t.nbytes(), path, ": tensor '", name, "' has ", en - b, " bytes but dtype ",
             dt, " and shape ", shape_str(t.shape), " need ", t.nbytes());
    t.data = const_cast<unsigned char*>(base + b);
    t.owner = owner;
    if (en > b) ranges.emplace_back(b, en);
    out.tensors[name] = t;
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    ET_CHECK(ranges[i].first >= ranges[i - 1].second, path,
             ": tensors overlap in the data section at byte ", ranges[i].first);
  }
  return out;
}

TensorFile read_model_weights(const std::string& dir) {
  std::string single = path_join(dir, "model.safetensors");
  std::string index = path_join(dir, "model.safetensors.index.json");
  if (file_exists(single)) return read_safetensors(single);
  if (file_exists(index)) {
    json j = read_json_file(index);
    ET_CHECK(j.contains("weight_map") && j["weight_map"].is_object(), index,
             ": missing object 'weight_map'");
    std::map<std::string, TensorFile> shards;
    TensorFile out;
    out.path = index;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      ET_CHECK(it->is_string(), index, ": weight_map.", it.key(), " must be a file name");
      std::string shard = it->get<std::string>();
      if (!shards.count(shard)) shards[shard] = read_safetensors(path_join(dir, shard));
      const TensorFile& s = shards[shard];
      ET_CHECK(s.has(it.key()), index, ": tensor '", it.key(), "' is listed in shard ", shard,
               " but that file does not contain it");
      out.tensors[it.key()] = s.at(it.key());
    }
    return out;
  }
  fail(dir,
       ": no model.safetensors or model.safetensors.index.json (pytorch_model.bin is not "
       "supported; convert it to safetensors)");
}

void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<std::pair<std::string, Tensor>> sorted = tensors;
  std::sort(sorted.begin(), sorted.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : sorted) {
    ET_CHECK(t.device == Device::CPU, "write_safetensors: tensor '", name, "' is not on the host");
    ET_CHECK(!header.contains(name), path, ": duplicate tensor name '", name, "'");
    header[name] = {{"dtype", dtype_name(t.dtype)},
                    {"shape", t.shape},
                    {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  std::string h = header.dump();
  while ((h.size() + 8) % 8 != 0) h.push_back(' ');  // data starts 8-byte aligned
  std::string buf;
  buf.resize(8 + h.size() + offset);
  uint64_t n = h.size();
  std::memcpy(buf.data(), &n, 8);
  std::memcpy(buf.data() + 8, h.data(), h.size());
  char* p = buf.data() + 8 + h.size();
  for (const auto& [name, t] : sorted) {
    if (t.nbytes()) std::memcpy(p, t.data, t.nbytes());
    p += t.nbytes();
  }
  write_file_atomic(path, buf.data(), buf.size());
}

}  // namespace et
