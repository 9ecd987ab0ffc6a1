#include "train/checkpoint.h"

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "io/safetensors.h"

namespace et {

namespace fs = std::filesystem;

void save_checkpoint(const Backend& be, const std::string& dir, const std::vector<Param*>& params,
                     const OptimizerState& opt, const TrainerState& st) {
  std::string tmp = dir + ".partial";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  make_dirs(tmp);
  std::vector<std::pair<std::string, Tensor>> values, moments;
  for (size_t i = 0; i < params.size(); ++i) {
    values.emplace_back(params[i]->name, be.download(params[i]->value));
    moments.emplace_back("m." + params[i]->name, be.download(opt.m[i]));
    moments.emplace_back("v." + params[i]->name, be.download(opt.v[i]));
  }
  write_safetensors(path_join(tmp, "trainable.safetensors"), values);
  write_safetensors(path_join(tmp, "optimizer.safetensors"), moments);
  json rng = json::array();
  for (uint64_t w : st.rng.s) rng.push_back(std::to_string(w));
  write_json_atomic(path_join(tmp, "trainer_state.json"), json{{"global_step", st.step},
                                                               {"epoch", st.epoch},
                                                               {"micro_batch", st.micro},
                                                               {"tokens", st.tokens},
                                                               {"rng", rng},
                                                               {"settings", st.settings}});
  replace_dir_atomic(tmp, dir);
}

void load_checkpoint(const Backend& be, const std::string& dir, const std::vector<Param*>& params,
                     OptimizerState& opt, TrainerState& st) {
  std::string sfile = path_join(dir, "trainer_state.json");
  json j = read_json_file(sfile);
  for (const char* k : {"global_step", "epoch", "micro_batch", "rng", "settings"})
    ET_CHECK(j.contains(k), sfile, ": missing field '", k, "'");
  if (j["settings"] != st.settings) {
    std::string diff;
    for (auto it = st.settings.begin(); it != st.settings.end(); ++it)
      if (!j["settings"].contains(it.key()) || j["settings"][it.key()] != *it)
        diff += " " + it.key() + " (checkpoint " +
                (j["settings"].contains(it.key()) ? j["settings"][it.key()].dump() : "none") +
                ", now " + it->dump() + ")";
    fail(sfile, ": the run settings differ from the checkpoint's:", diff);
  }
  st.step = j["global_step"].get<int64_t>();
  st.epoch = j["epoch"].get<int>();
  st.micro = j["micro_batch"].get<int64_t>();
  st.tokens = j.value("tokens", int64_t{0});
  ET_CHECK(j["rng"].is_array() && j["rng"].size() == 4, sfile, ": rng must hold 4 words");
  for (int i = 0; i < 4; ++i) st.rng.s[i] = std::stoull(j["rng"][i].get<std::string>());
  TensorFile values = read_safetensors(path_join(dir, "trainable.safetensors"));
  TensorFile moments = read_safetensors(path_join(dir, "optimizer.safetensors"));
  auto load_into = [&](const TensorFile& f, const std::string& name, Tensor& dst) {
    const Tensor& src = f.at(name);
    ET_CHECK(src.shape == dst.shape, f.path, ": '", name, "' has shape ", shape_str(src.shape),
             ", the model needs ", shape_str(dst.shape));
    Tensor up = be.upload(to_f32(src));
    be.copy(dst, up);
  };
  ET_CHECK(values.tensors.size() == params.size(), values.path, ": holds ", values.tensors.size(),
           " tensors, the run trains ", params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    load_into(values, params[i]->name, params[i]->value);
    load_into(moments, "m." + params[i]->name, opt.m[i]);
    load_into(moments, "v." + params[i]->name, opt.v[i]);
  }
}

static std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& out) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::string root = path_join(out, "checkpoints");
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return found;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    std::string name = e.path().filename().string();
    if (name.rfind("checkpoint-", 0) != 0 || name.find('.') != std::string::npos) continue;
    if (!file_exists(path_join(e.path().string(), "trainer_state.json"))) continue;
    try {
      found.emplace_back(std::stoll(name.substr(11)), e.path().string());
    } catch (const std::exception&) {
    }
  }
  std::sort(found.begin(), found.end());
  return found;
}

std::string latest_checkpoint(const std::string& out) {
  auto all = list_checkpoints(out);
  return all.empty() ? "" : all.back().second;
}

void prune_checkpoints(const std::string& out, int keep) {
  if (keep <= 0) return;
  auto all = list_checkpoints(out);
  std::error_code ec;
  for (size_t i = 0; i + keep < all.size(); ++i) fs::remove_all(all[i].second, ec);
}

}  // namespace et
