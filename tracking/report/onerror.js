window.__reportErrors = [];
function __reportError(text) {
  window.__reportErrors.push(text);
  var put = function () {
    var pre = document.getElementById('report-errors'), st = document.getElementById('report-status');
    if (!pre || !st) return false;
    pre.textContent = window.__reportErrors.join('\n');
    st.setAttribute('data-state', 'error'); st.textContent = 'error';
    return true;
  };
  if (!put()) document.addEventListener('DOMContentLoaded', put);
}
window.onerror = function (msg, src, line, col) { __reportError(msg + ' (line ' + line + ':' + col + ')'); };
window.addEventListener('unhandledrejection', function (e) { __reportError('unhandled rejection: ' + e.reason); });
