# Sourced by bench scripts: a private Postfix instance on a loopback port, for comparison.
#   postfix_start DIR PORT [extra main.cf lines...]   postfix_stop DIR
#   postfix_queued DIR   messages in its queue (0: everything handed on)
# It queues in DIR/spool; Postfix fsyncs each queue file before its 250, as switchyard
# fsyncs before its own.

postfix_start() {
  local dir=$1 port=$2; shift 2
  mkdir -p "$dir/etc" "$dir/spool" "$dir/data"
  cp /etc/postfix/master.cf.proto "$dir/etc/master.cf" 2>/dev/null || cp /usr/share/postfix/master.cf.dist "$dir/etc/master.cf"
  # Listen on our loopback port instead of 25, without chroot.
  sed -i -E "s/^smtp( +)inet .*/127.0.0.1:${port} inet n - n - - smtpd/" "$dir/etc/master.cf"
  cat > "$dir/etc/main.cf" <<MAIN
compatibility_level = 3.6
queue_directory = $dir/spool
data_directory = $dir/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_recipient_restrictions = permit_mynetworks, reject
maillog_file_prefixes = $dir
maillog_file = $dir/maillog
default_process_limit = 200
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
MAIN
  for line in "$@"; do echo "$line" >> "$dir/etc/main.cf"; done
  chown -R root:root "$dir/etc"
  chown postfix "$dir/data"
  postfix -c "$dir/etc" check >/dev/null 2>&1 || true
  postfix -c "$dir/etc" start >/dev/null 2>&1 || true
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && return 0
    sleep 0.1
  done
  echo "postfix did not start; see $dir/maillog" >&2
  return 1
}

postfix_queued() {
  find "$1/spool/incoming" "$1/spool/active" "$1/spool/deferred" "$1/spool/maildrop" \
       -type f 2>/dev/null | wc -l
}

postfix_stop() {
  postfix -c "$1/etc" stop >/dev/null 2>&1 || true
  postfix -c "$1/etc" abort >/dev/null 2>&1 || true
}
