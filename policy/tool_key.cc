#include "policy/tool_key.h"

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>

namespace kvkeep {
namespace {

// Commands longer than this are keyed by their head only (heredocs can be huge).
constexpr size_t kMaxCommandBytes = 64 * 1024;

enum class TokenKind { kWord, kSeparator, kRedirect };

struct Token {
  TokenKind kind;
  std::string text;
};

bool IsSeparatorChar(char c) {
  return c == ';' || c == '&' || c == '|' || c == '\n' || c == '(' || c == ')';
}

// Splits a shell command line into words, separators (; & | && || newline parentheses)
// and redirections, honouring quotes, backslashes, $(...) and backticks. Not a full
// shell grammar: enough to find the program a command line runs first.
std::vector<Token> Lex(std::string_view s) {
  std::vector<Token> out;
  std::string word;
  bool in_word = false;
  auto flush = [&] {
    if (in_word) out.push_back({TokenKind::kWord, word});
    word.clear();
    in_word = false;
  };
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (c == '\\') {
      if (i + 1 < s.size() && s[i + 1] == '\n') {
        ++i;  // line continuation
        continue;
      }
      if (i + 1 < s.size()) word += s[++i];
      in_word = true;
    } else if (c == '\'' || c == '"') {
      size_t j = i + 1;
      while (j < s.size() && s[j] != c) {
        if (c == '"' && s[j] == '\\' && j + 1 < s.size()) ++j;
        word += s[j++];
      }
      i = j;
      in_word = true;
    } else if (c == '`' || (c == '$' && i + 1 < s.size() && s[i + 1] == '(')) {
      // Command substitution stays inside the word it belongs to.
      size_t j = i + 1;
      if (c == '`') {
        while (j < s.size() && s[j] != '`') ++j;
      } else {
        int depth = 0;
        for (; j < s.size(); ++j) {
          if (s[j] == '(') ++depth;
          if (s[j] == ')' && --depth == 0) break;
        }
      }
      word.append(s.substr(i, std::min(j + 1, s.size()) - i));
      i = j;
      in_word = true;
    } else if (c == ' ' || c == '\t' || c == '\r') {
      flush();
    } else if (c == '<' || c == '>') {
      // "2>" and "&>" bind a file descriptor: drop it with the operator.
      if (in_word && std::all_of(word.begin(), word.end(), ::isdigit)) {
        word.clear();
        in_word = false;
      }
      flush();
      size_t j = i;
      while (j < s.size() && (s[j] == '<' || s[j] == '>' || s[j] == '&' || s[j] == '-')) ++j;
      out.push_back({TokenKind::kRedirect, std::string(s.substr(i, j - i))});
      i = j - 1;
    } else if (IsSeparatorChar(c)) {
      flush();
      size_t j = i;
      while (j + 1 < s.size() && (s[j + 1] == '&' || s[j + 1] == '|' || s[j + 1] == ';') &&
             c != '\n' && c != '(' && c != ')') {
        ++j;
      }
      out.push_back({TokenKind::kSeparator, std::string(s.substr(i, j - i + 1))});
      i = j;
    } else {
      word += c;
      in_word = true;
    }
  }
  flush();
  return out;
}

bool IsAssignment(const std::string& w) {
  size_t eq = w.find('=');
  if (eq == std::string::npos || eq == 0) return false;
  if (!(std::isalpha(static_cast<unsigned char>(w[0])) || w[0] == '_')) return false;
  return std::all_of(w.begin(), w.begin() + static_cast<long>(eq), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
  });
}

bool IsNumberLike(const std::string& w) {
  return !w.empty() && std::isdigit(static_cast<unsigned char>(w[0]));
}

// Segments whose first word only changes the shell's state (or opens a compound
// statement): they run no program of their own.
bool IsStateOnly(const std::string& w) {
  static const char* const kWords[] = {"cd",    "pushd",   "popd",     "export", "source", ".",
                                       "set",   "unset",   "alias",    "umask",  "ulimit", "for",
                                       "case",  "select",  "function", "shopt",  "trap",   "wait",
                                       "local", "declare", "readonly"};
  return std::any_of(std::begin(kWords), std::end(kWords), [&](const char* k) { return w == k; });
}

// Keywords that prefix a command without being one.
bool IsKeyword(const std::string& w) {
  return w == "{" || w == "!" || w == "if" || w == "then" || w == "else" || w == "elif" ||
         w == "do" || w == "while" || w == "until" || w == "time" || w == "nohup" ||
         w == "command" || w == "exec" || w == "builtin";
}

std::string BaseName(std::string_view w) {
  const size_t slash = w.find_last_of('/');
  return std::string(slash == std::string_view::npos ? w : w.substr(slash + 1));
}

std::string FoldVersion(const std::string& w) {
  for (const char* stem : {"python", "pip", "pytest"}) {
    const std::string_view st(stem);
    if (w.size() > st.size() && w.compare(0, st.size(), st) == 0 &&
        std::all_of(w.begin() + static_cast<long>(st.size()), w.end(), [](char c) {
          return std::isdigit(static_cast<unsigned char>(c)) || c == '.';
        })) {
      return std::string(st);
    }
  }
  return w;
}

// The program of one simple command (words up to the next separator), starting at
// words[i]; empty if the segment runs none.
std::string SegmentProgram(const std::vector<Token>& t, size_t i, size_t end,
                           const ToolKeyOptions& o) {
  auto word_at = [&](size_t k) -> const std::string* {
    return k < end && t[k].kind == TokenKind::kWord ? &t[k].text : nullptr;
  };
  while (i < end) {
    if (t[i].kind == TokenKind::kRedirect) {
      i += 2;  // the operator and its target
      continue;
    }
    const std::string& w = t[i].text;
    if (IsAssignment(w) || IsKeyword(w)) {
      ++i;
    } else if (w == "timeout") {
      ++i;
      while (const std::string* a = word_at(i)) {
        if (*a == "-s" || *a == "-k" || *a == "--signal" || *a == "--kill-after") {
          i += 2;
        } else if (!a->empty() && (*a)[0] == '-') {
          ++i;
        } else {
          break;
        }
      }
      if (const std::string* d = word_at(i); d && IsNumberLike(*d)) ++i;  // the duration
    } else if (w == "env" || w == "sudo" || w == "nice" || w == "stdbuf" || w == "ionice") {
      ++i;
      while (const std::string* a = word_at(i)) {
        const bool takes_arg = (w == "env" && *a == "-u") || (w == "sudo" && *a == "-u") ||
                               (w == "nice" && *a == "-n") || (w == "ionice" && *a == "-c");
        if (takes_arg) {
          i += 2;
        } else if ((!a->empty() && (*a)[0] == '-') || (w == "env" && IsAssignment(*a))) {
          ++i;
        } else {
          break;
        }
      }
    } else if (IsStateOnly(w)) {
      return "";
    } else {
      const std::string program = o.fold_versions ? FoldVersion(BaseName(w)) : BaseName(w);
      if (program == "python" && o.python_module_as_key) {
        for (size_t k = i + 1; const std::string* a = word_at(k); ++k) {
          if (*a == "-m") {
            if (const std::string* mod = word_at(k + 1)) {
              return o.fold_versions ? FoldVersion(*mod) : *mod;
            }
            break;
          }
          if (a->empty() || (*a)[0] != '-' || *a == "-c") break;  // the script or -c code
        }
      }
      return program;
    }
  }
  return "";
}

}  // namespace

std::string ShellCommandProgram(std::string_view command, const ToolKeyOptions& options) {
  const std::vector<Token> tokens = Lex(command.substr(0, kMaxCommandBytes));
  size_t begin = 0;
  while (begin < tokens.size()) {
    size_t end = begin;
    while (end < tokens.size() && tokens[end].kind != TokenKind::kSeparator) ++end;
    std::string program = SegmentProgram(tokens, begin, end, options);
    if (!program.empty()) return program;
    begin = end + 1;
  }
  return "";
}

namespace {

std::string CommandKey(std::string_view tool_name, std::string_view command,
                       const ToolKeyOptions& options) {
  const bool is_shell = std::find(options.shell_tools.begin(), options.shell_tools.end(),
                                  tool_name) != options.shell_tools.end();
  std::string program;
  if (!command.empty()) program = ShellCommandProgram(command, options);
  // SWE-agent's commands: the tool's name is the first word of the command line.
  const bool names_itself = !tool_name.empty() &&
                            command.substr(0, tool_name.size()) == tool_name &&
                            (command.size() == tool_name.size() ||
                             std::isspace(static_cast<unsigned char>(command[tool_name.size()])));
  if ((is_shell || names_itself) && !program.empty()) return program;
  if (!tool_name.empty()) return std::string(tool_name);
  return program.empty() ? "unknown" : program;
}

std::string NameKey(std::string_view tool_name) {
  return tool_name.empty() ? "unknown" : std::string(tool_name);
}

}  // namespace

std::string ToolKey(std::string_view tool_name, std::string_view command) {
  static const ToolKeyOptions kDefaults;
  return CommandKey(tool_name, command, kDefaults);
}

std::string ToolKeyOfArgs(std::string_view tool_name, const std::string& args) {
  const nlohmann::json a = nlohmann::json::parse(args, nullptr, /*allow_exceptions=*/false);
  for (const char* field : {"command", "cmd"}) {
    if (a.is_object() && a.contains(field) && a[field].is_string()) {
      return ToolKey(tool_name, a[field].get<std::string>());
    }
  }
  return ToolKey(tool_name, a.is_discarded() ? args : "");
}

Result<ToolKeyFunction> MakeToolKeyFunction(std::string_view kind, const ToolKeyOptions& options) {
  if (kind == "command") {
    return ToolKeyFunction([options](std::string_view tool, std::string_view command) {
      return CommandKey(tool, command, options);
    });
  }
  if (kind == "name") {
    return ToolKeyFunction([](std::string_view tool, std::string_view) { return NameKey(tool); });
  }
  return Status::InvalidArgument("unknown tool key function '" + std::string(kind) +
                                 "' (known: command, name)");
}

}  // namespace kvkeep
