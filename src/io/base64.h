// Standard base64 (RFC 4648, with '=' padding), as tokenizer.json stores binary blobs.
#pragma once

#include <string>
#include <string_view>

namespace et {

std::string base64_encode(std::string_view bytes);
// Throws et::Error naming `where` on a character outside the alphabet or a bad length.
std::string base64_decode(std::string_view text, const std::string& where);

}  // namespace et
